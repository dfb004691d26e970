"""An installed mt works without the source tree: the wheel ships every config, and `mt` from a
fresh virtual environment prepares and trains from a folder outside the checkout."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from mt import __version__
from tests.conftest import write_corpus

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    result = subprocess.run([*cmd, "-w", str(out), str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    (found,) = out.glob("mt-*.whl")
    return found


def test_the_wheel_holds_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*.yaml"))
    assert configs, "no configs found in the checkout"
    missing = [str(p) for p in configs if f"mt/configs/{p.as_posix()}" not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert f"mt-{__version__}.dist-info/METADATA" in names


def _fresh_venv(root: Path) -> Path:
    """A new virtual environment whose only mt is the one installed into it.

    The dependencies (torch, hydra, ...) come from this interpreter's site-packages through a
    .pth line; .pth files inside that folder are not run, so this checkout's editable mt is
    not visible there.
    """
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_an_installed_wheel_prepares_and_trains_outside_the_checkout(wheel, tmp_path):
    venv = _fresh_venv(tmp_path)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*pip, str(wheel)], check=True)
    work = tmp_path / "work"  # outside the checkout, with no configs/ folder
    write_corpus(work / "corpus", {"train": 120, "valid": 10, "test": 10})

    def mt(*args: str) -> subprocess.CompletedProcess:
        cmd = [str(venv / "bin" / "mt"), *args]
        return subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import mt.config as c; print(c.CONFIG_DIR)"],
        cwd=work, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(venv)) and where.endswith("mt/configs")
    assert mt("--version").stdout.strip() == f"mt {__version__}"
    prepared = mt("prepare", "data=local", "data.path=corpus", "out_dir=data", "spm.vocab_size=320")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    trained = mt(
        "train", "data_dir=data", "run_dir=run", "model=tiny", "train.device=cpu",
        "train.precision=fp32", "train.max_steps=2", "train.max_tokens=256",
        "train.valid_bleu=false",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (work / "run" / "checkpoints" / "last.pt").is_file()


def test_a_users_config_dir_adds_experiments(prepared_dir, tmp_path):
    from tests.test_cli import mt

    mine = tmp_path / "conf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: tiny\n"
        "train:\n  max_steps: 3\n  device: cpu\n  precision: fp32\n  valid_bleu: false\n"
    )
    result = mt(
        "train", "--config-dir", str(tmp_path / "conf"), "experiment=mine",
        f"data_dir={prepared_dir}", f"run_dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reached train.max_steps=3" in (tmp_path / "run" / "train.log").read_text()
    missing = mt("train", "--config-dir", str(tmp_path / "nope"), "experiment=mine")
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
