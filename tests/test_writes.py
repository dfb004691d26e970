"""Writes that cannot destroy, and file-system faults as sentences: real faults only.

A full device is /dev/full or a small tmpfs mounted for the test (skipped where mounting is
refused), a read-only file system is that tmpfs remounted read-only, and the other faults are
made with real paths (a folder where a file goes, a path through a regular file, a deleted
shard). Every command runs as a user runs it, in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from mt.checkpoint import load_checkpoint, save_checkpoint
from mt.errors import FileFault
from mt.files import Output
from tests.conftest import train_config
from tests.test_cli import MT, assert_clean_error, mt


@pytest.fixture(scope="module")
def tiny_run(prepared_dir, tmp_path_factory) -> Path:
    """A run of the tiny model after 2 steps: quality does not matter here, files do."""
    from mt.train import run_train

    run = tmp_path_factory.mktemp("writes") / "run"
    run_train(train_config(prepared_dir, run, "train.max_steps=2"))
    return run


@pytest.fixture
def small_fs(tmp_path):
    """mount(size) -> a fresh tmpfs of `size` bytes; unmounted at the end of the test."""
    mounted = []

    def mount(size: int, name: str = "fs") -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"mounting a tmpfs is refused here ({done.stderr.strip()})")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _remount_read_only(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)


def _source(tmp_path: Path, lines: int = 40) -> Path:
    src = tmp_path / "in.en"
    src.write_text("".join(f"the man sees a dog {i}\n" for i in range(lines)), encoding="utf-8")
    return src


def _translate(run: Path, *args: str):
    return mt("translate", f"run_dir={run}", "decode.beam=1", "decode.max_len_b=3", *args)


# ------------------------------------------------------------- outputs never destroy inputs


def test_output_that_is_the_input_is_refused_and_the_input_kept(tiny_run, tmp_path):
    src = _source(tmp_path)
    before = src.read_bytes()
    link = tmp_path / "link.en"
    os.link(src, link)  # another spelling of the same file
    for output in (src, link, tmp_path / "." / "in.en"):
        result = _translate(tiny_run, f"input={src}", f"output={output}")
        assert_clean_error(result, "is the same file as the input")
    assert src.read_bytes() == before


def test_eval_output_or_report_that_is_an_input_is_refused(tiny_run, tmp_path):
    src = _source(tmp_path, 5)
    ref = tmp_path / "ref.de"
    ref.write_text("ein Mann\n" * 5, encoding="utf-8")
    before = ref.read_bytes()
    result = mt("eval", f"run_dir={tiny_run}", f"src={src}", f"ref={ref}", f"output={ref}")
    assert_clean_error(result, "is the same file as the input")
    result = mt("eval", f"hyp={ref}", f"ref={ref}", f"report={ref}")
    assert_clean_error(result, "report", "is the same file as the input")
    assert ref.read_bytes() == before


def test_a_failed_translation_leaves_the_previous_output_untouched(tiny_run, tmp_path):
    out = tmp_path / "out.de"
    out.write_text("the user's earlier translations\n", encoding="utf-8")
    before = out.read_bytes()
    result = _translate(tiny_run, f"input={tmp_path / 'missing.en'}", f"output={out}")
    assert_clean_error(result, "missing.en")
    bad = tmp_path / "bad.en"
    bad.write_bytes(b"".join(b"line %d\n" % i for i in range(30)) + b"\xff\xfe\n")
    result = mt(
        "translate", f"run_dir={tiny_run}", f"input={bad}", f"output={out}", "decode.beam=1",
        "decode.max_len_b=3", "decode.buffer_lines=10",
    )  # fmt: skip
    assert result.returncode == 2 and "bad.en:31" in result.stderr
    assert "Traceback" not in result.stderr
    assert out.read_bytes() == before
    partial = tmp_path / "out.de.partial"
    assert len(partial.read_text(encoding="utf-8").splitlines()) == 30  # whole buffers only
    assert "out.de.partial" in result.stderr
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_sigterm_mid_translation_keeps_the_output_and_whole_lines(tiny_run, tmp_path):
    src = _source(tmp_path, 4000)
    out = tmp_path / "out.de"
    out.write_text("earlier\n", encoding="utf-8")
    cmd = [
        *MT.split(), "translate", f"run_dir={tiny_run}", f"input={src}",
        f"output={out}", "decode.beam=4", "decode.buffer_lines=50", "decode.max_len_b=40",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    partial_temp = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and partial_temp is None:  # wait for the first lines
        time.sleep(0.2)
        temps = [p for p in tmp_path.iterdir() if ".tmp-" in p.name and p.stat().st_size > 0]
        partial_temp = temps[0] if temps else None
    assert partial_temp is not None, "no output was being written"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert out.read_text(encoding="utf-8") == "earlier\n"
    kept = (tmp_path / "out.de.partial").read_text(encoding="utf-8")
    assert kept.endswith("\n") and len(kept.splitlines()) % 50 == 0
    assert "out.de.partial" in stderr


# ------------------------------------------------------------- faults are sentences


def test_full_device_is_a_sentence(tiny_run, tmp_path):
    src = _source(tmp_path, 5)
    result = _translate(tiny_run, f"input={src}", "output=/dev/full")
    assert_clean_error(result, "/dev/full", "no space left")
    result = mt("eval", f"hyp={src}", f"ref={src}", "report=/dev/full")
    assert_clean_error(result, "/dev/full", "no space left")


def test_small_tmpfs_full_keeps_the_previous_output(tiny_run, tmp_path, small_fs):
    point = small_fs(64 * 1024)
    out = point / "out.de"
    out.write_text("earlier\n", encoding="utf-8")
    (point / "ballast").write_bytes(b"\0" * 56 * 1024)  # about 4 kB left
    src = _source(tmp_path, 1000)
    result = mt(
        "translate", f"run_dir={tiny_run}", f"input={src}", f"output={out}", "decode.beam=2",
        "decode.nbest=2", "decode.max_len_b=3", "decode.buffer_lines=100",
    )  # n-best lines are at least 10 bytes: 20 kB in all  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "no space left on the device" in result.stderr and str(out) in result.stderr
    assert out.read_text(encoding="utf-8") == "earlier\n"


def test_read_only_file_system_is_a_sentence(tiny_run, tmp_path, small_fs):
    point = small_fs(1 << 20)
    (point / "out.de").write_text("earlier\n", encoding="utf-8")
    _remount_read_only(point)
    src = _source(tmp_path, 3)
    result = _translate(tiny_run, f"input={src}", f"output={point / 'out.de'}")
    assert_clean_error(result, "read-only", "out.de is unchanged")
    result = mt("eval", f"hyp={src}", f"ref={src}", f"report={point / 'r.json'}")
    assert_clean_error(result, "read-only")
    result = mt("export", f"run_dir={tiny_run}", f"out_dir={point / 'ct2'}", "format=huggingface")
    assert_clean_error(result, "read-only")


def test_folders_and_paths_through_files_are_sentences(tiny_run, tmp_path):
    src = _source(tmp_path, 3)
    result = _translate(tiny_run, f"input={src}", f"output={tmp_path}")
    assert_clean_error(result, "is a folder")
    result = _translate(tiny_run, f"input={src}", f"output={src}/out.de")
    assert_clean_error(result, "is a file, not a folder")
    result = _translate(
        tiny_run, f"input={src}", f"output={tmp_path / 'o.de'}", f"decode.attention_dir={src}"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    result = mt("eval", f"hyp={src}", f"ref={src}", f"report={src}/r.json")
    assert_clean_error(result, "not a folder")
    result = mt("export", f"run_dir={tiny_run}", f"out_dir={src}", "format=huggingface")
    assert_clean_error(result, "is a file")
    result = mt("export", f"run_dir={tiny_run}", f"out_dir={src}/x", "format=huggingface")
    assert_clean_error(result, "is a file, not a folder")


def test_a_deleted_shard_is_a_sentence(prepared_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared_dir, data)
    (data / "valid.tgt.offsets.npy").unlink()
    result = mt(
        "train", f"data_dir={data}", f"run_dir={tmp_path / 'run'}", "model=tiny",
        "train.max_steps=1", "train.device=cpu", "train.tune_decoding=false",
    )  # fmt: skip
    assert_clean_error(result, "valid.tgt.offsets.npy is missing", "force=true")


def test_alignment_layer_out_of_range_is_a_sentence(tiny_run, tmp_path):
    src = _source(tmp_path, 2)
    result = _translate(
        tiny_run, f"input={src}", "output=-", "decode.alignment=true", "decode.alignment_layer=99"
    )
    assert_clean_error(result, "decode.alignment_layer=99", "decoder layers")


def test_an_endless_line_is_refused_with_its_line(tiny_run, tmp_path):
    src = tmp_path / "long.en"
    src.write_bytes(b"a dog\n" + b"x" * 1_200_000)
    result = _translate(tiny_run, f"input={src}", "output=-")
    assert_clean_error(result, "long.en:2", "longer than 1,000,000 bytes")


# ------------------------------------------------------------- checkpoints on a full disk


def test_checkpoint_on_a_full_tmpfs_keeps_the_previous_one(small_fs):
    point = small_fs(256 * 1024)
    path = point / "last.pt"
    save_checkpoint({"w": torch.ones(10)}, path)
    with pytest.raises(FileFault, match="no space left on the device; .*last.pt is unchanged"):
        save_checkpoint({"w": torch.zeros(200_000)}, path)  # 800 kB: torch's writer fails
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(10))
    assert os.listdir(point) == ["last.pt"]


def test_training_on_a_full_disk_stops_with_a_sentence(prepared_dir, small_fs):
    point = small_fs(16 << 20, "run")
    run = point / "r"
    mt_train = (
        "train", f"data_dir={prepared_dir}", f"run_dir={run}", "model=tiny", "train.device=cpu",
        "train.tune_decoding=false",
        "train.valid_every=1", "train.valid_bleu=false", "train.threads=1",
    )  # fmt: skip
    assert mt(*mt_train, "train.max_steps=2").returncode == 0
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    free = shutil.disk_usage(point).free
    (point / "ballast").write_bytes(b"\0" * (free - len(before) // 2))  # half a checkpoint left
    result = mt(*mt_train, "train.max_steps=4")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "no space left on the device" in result.stderr
    assert last.read_bytes() == before
    assert load_checkpoint(last)["train_state"]["step"] == 2
    assert not list((run / "checkpoints").glob(".*tmp*"))


# ------------------------------------------------------------- the Output class itself


def test_output_appears_only_when_closed(tmp_path):
    out = Output(str(tmp_path / "o.txt"))
    out.write("one\n")
    out.commit(1)
    assert not (tmp_path / "o.txt").exists()
    out.close()
    assert (tmp_path / "o.txt").read_text() == "one\n"


def test_abandoned_output_keeps_whole_lines_only(tmp_path):
    (tmp_path / "o.txt").write_text("old\n")
    out = Output(str(tmp_path / "o.txt"))
    out.write("one\ntwo\n")
    out.commit(2)
    out.write("thr")  # a line cut mid-way
    said = out.abandon()
    assert (tmp_path / "o.txt").read_text() == "old\n"
    assert (tmp_path / "o.txt.partial").read_text() == "one\ntwo\n"
    assert "first 2 input lines" in said and "is unchanged" in said
