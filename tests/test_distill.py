"""scripts/distill.sh: a teacher run translates the training sources, a student trains on them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mt.config import DecodeConfig
from mt.decode.torch_engine import TorchTranslator

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "distill.sh"
STUDENT = [
    "model=tiny",
    "train.device=cpu",
    "train.tune_decoding=false",
    "train.precision=fp32",
    "train.max_tokens=512",
    "train.max_steps=4",
    "train.warmup_steps=2",
    "train.valid_every=0",
    "train.threads=1",
    "spm.vocab_size=320",
]


def _distill(teacher: Path, data: Path, out: Path, student: Path, *extra: str):
    env = {
        **os.environ,
        "TRAIN": "train", "VALID": "valid", "TEST": "test", "DATA": "local", "BEAM": "2",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }  # fmt: skip
    cmd = ["bash", str(SCRIPT), str(teacher), str(data), str(out), str(student), *STUDENT, *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("bash") is None, reason="distill.sh is a bash script")
def test_student_trains_on_the_teachers_beam_translation(overfit_run, overfit_loaded, tmp_path):
    corpus, teacher, _ = overfit_run
    out, student = tmp_path / "distilled", tmp_path / "student"
    result = _distill(teacher, corpus, out, student)
    assert result.returncode == 0, result.stderr[-3000:]

    # train.de is the teacher's beam-2 output, line for line; everything else links the originals
    sources = (corpus / "train.en").read_text(encoding="utf-8").splitlines()
    translator = TorchTranslator(overfit_loaded, DecodeConfig(beam=2), torch.device("cpu"), "fp32")
    expected = [hyps[0][0] if hyps else "" for hyps in translator.translate(sources)]
    assert (out / "train.de").read_text(encoding="utf-8").splitlines() == expected
    assert not (out / "train.de.partial").exists()
    for name in ("train.en", "valid.en", "valid.de", "test.en", "test.de"):
        assert (out / name).is_symlink()
        assert (out / name).read_bytes() == (corpus / name).read_bytes()

    # the student trained on that folder, with the overrides given after the four paths
    results = json.loads((student / "results.json").read_text(encoding="utf-8"))
    assert results["step"] == 4
    manifest = json.loads((out.parent / "distilled.data-bin" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["pairs"] <= len(sources)

    # run again: the finished translation is reused, not recomputed
    again = _distill(teacher, corpus, out, tmp_path / "student2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the teacher's translation" in again.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="distill.sh is a bash script")
def test_missing_inputs_are_named(overfit_run, tmp_path):
    corpus, teacher, _ = overfit_run
    result = _distill(tmp_path, corpus, tmp_path / "o", tmp_path / "s")
    assert result.returncode == 1
    assert f"{tmp_path} is not a trained run folder" in result.stderr
    result = _distill(teacher, tmp_path, tmp_path / "o", tmp_path / "s")
    assert result.returncode == 1
    assert f"missing file {tmp_path}/train.en (nor train.en.gz)" in result.stderr
    usage = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert usage.returncode == 2 and "TEACHER_RUN" in usage.stderr
