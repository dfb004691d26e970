"""The `mt` console script, run as a user runs it (a subprocess)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_corpus

MT = shutil.which("mt") or f"{sys.executable} -m mt"


def mt(*args: str, cwd: Path | None = None, stdin: str | None = None):
    cmd = [*MT.split(), *args]
    return subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=300)


def assert_clean_error(result, *fragments: str) -> None:
    """Exit 2, one line on stderr naming what is wrong, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_every_stage():
    result = mt("--help")
    assert result.returncode == 0
    for stage in ("prepare", "train", "translate", "eval"):
        assert f"  {stage} " in result.stdout


def test_unknown_stage_fails_cleanly():
    assert_clean_error(mt("frobnicate"), "unknown stage 'frobnicate'")


def test_stage_help_and_cfg_job_are_hydra_flags():
    result = mt("prepare", "--help")
    assert result.returncode == 0
    assert "data: " in result.stdout and "multi30k_local" in result.stdout
    result = mt("prepare", "--cfg", "job", "spm.vocab_size=123")
    assert result.returncode == 0
    assert "vocab_size: 123" in result.stdout


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("spm.vocab_sise=100", "unknown config key 'spm.vocab_sise'"),
        ("spm.vocab_size=many", "'spm.vocab_size'"),
        ("clean.normalize=NFX", "clean.normalize='NFX'"),
        ("data=atlantis", "Could not find 'data/atlantis'"),
    ],
)
def test_bad_config_is_one_sentence_naming_the_key(override, fragment, tmp_path):
    assert_clean_error(mt("prepare", "data=local", f"data.path={tmp_path}", override), fragment)


def test_prepare_end_to_end_with_relative_paths(tmp_path):
    write_corpus(tmp_path / "corpus")
    args = ("prepare", "data=local", "data.path=corpus", "out_dir=out", "spm.vocab_size=320")
    first = mt(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "train" in first.stdout and "wrote out" in first.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["test"]["pairs"] == 20
    assert not (tmp_path / "outputs").exists()  # Hydra neither changes cwd nor writes logs
    again = mt(*args, cwd=tmp_path)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_prepare_bad_inputs_through_the_cli(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "valid.de").write_text("only one line\n")
    assert_clean_error(
        mt("prepare", "data=local", f"data.path={corpus}", f"out_dir={tmp_path / 'o'}"),
        "valid.en has 20 lines but",
        "valid.de has 1",
    )
    (corpus / "valid.de").unlink()
    assert_clean_error(
        mt("prepare", "data=local", f"data.path={corpus}", f"out_dir={tmp_path / 'o'}"),
        "missing file",
        "valid.de",
    )
