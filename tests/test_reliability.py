"""Interrupted runs, non-finite values and concurrent runs lose nothing."""

import signal
import subprocess
import time

import pytest
import torch

from mt.checkpoint import load_checkpoint
from mt.errors import MTError
from mt.loss import Seq2SeqLoss
from mt.train import run_train
from tests.conftest import train_config
from tests.test_cli import MT


class _PoisonedLoss(Seq2SeqLoss):
    """Returns a NaN loss on the calls listed in `bad_calls` (0-based, training calls only)."""

    bad_calls: set[int] = set()
    calls = 0

    def forward(self, *args):
        loss, nll = super().forward(*args)
        if self.training:
            call = type(self).calls
            type(self).calls += 1
            if call in self.bad_calls or -1 in self.bad_calls:
                loss = loss * float("nan")
        return loss, nll


def test_non_finite_steps_are_skipped_and_logged(prepared_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("mt.train.Seq2SeqLoss", _PoisonedLoss)
    monkeypatch.setattr(_PoisonedLoss, "bad_calls", {1, 2})
    monkeypatch.setattr(_PoisonedLoss, "calls", 0)
    results = run_train(
        train_config(prepared_dir, tmp_path / "r", "train.max_steps=4", "train.valid_bleu=false")
    )
    assert results["step"] == 4  # two poisoned calls skipped, four real updates
    assert _PoisonedLoss.calls == 6
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def test_too_many_non_finite_steps_stop_the_run(prepared_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("mt.train.Seq2SeqLoss", _PoisonedLoss)
    monkeypatch.setattr(_PoisonedLoss, "bad_calls", {-1})
    with pytest.raises(MTError, match="3 consecutive steps had a non-finite"):
        run_train(
            train_config(
                prepared_dir, tmp_path / "r", "train.max_steps=10", "train.max_bad_steps=3"
            )
        )


def _start_train(prepared_dir, run_dir, *extra):
    args = [
        *MT.split(),
        "train",
        f"data_dir={prepared_dir}",
        f"run_dir={run_dir}",
        "model=tiny",
        "train.device=cpu",
        "train.precision=fp32",
        "train.max_tokens=256",
        "train.valid_bleu=false",
        "train.log_every=1",
        *extra,
    ]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=120):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - start < timeout
        time.sleep(0.2)


def test_sigterm_checkpoints_and_says_how_to_resume(prepared_dir, tmp_path):
    run = tmp_path / "r"
    proc = _start_train(prepared_dir, run, "train.max_steps=100000", "train.valid_every=0")
    _wait_for(run / "train.log", proc)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Run the same command again to resume" in err
    step = load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["step"]
    assert step > 0
    again = _start_train(prepared_dir, run, f"train.max_steps={step + 2}")
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert f"resuming {run} from step {step}" in err


def test_second_run_on_the_same_dir_is_refused(prepared_dir, tmp_path):
    run = tmp_path / "r"
    first = _start_train(prepared_dir, run, "train.max_steps=100000", "train.valid_every=0")
    try:
        _wait_for(run / "train.log", first)
        second = _start_train(prepared_dir, run, "train.max_steps=2")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2
        assert "is in use by another mt train process" in err and "Traceback" not in err
    finally:
        first.kill()  # kill -9: the lock must die with it
        first.wait()
    third = _start_train(prepared_dir, run, "train.max_steps=1")
    _, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
