"""Interrupted runs, non-finite values and concurrent runs lose nothing."""

import signal
import subprocess
import time

import pytest
import torch

from mt.checkpoint import load_checkpoint, step_checkpoints
from mt.errors import MTError
from mt.train import run_train
from tests.conftest import prepare_config, train_config, write_corpus
from tests.test_cli import MT


def _start_train(prepared_dir, run_dir, *extra):
    args = [
        *MT.split(),
        "train",
        f"data_dir={prepared_dir}",
        f"run_dir={run_dir}",
        "model=tiny",
        "train.device=cpu",
        "train.tune_decoding=false",
        "train.precision=fp32",
        "train.max_tokens=256",
        "train.valid_bleu=false",
        "train.log_every=1",
        *extra,
    ]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=120, text=""):
    """Wait until `path` exists (and holds `text`), failing if the process ends first."""
    start = time.time()
    while not path.exists() or text not in path.read_text(encoding="utf-8", errors="replace"):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - start < timeout
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_stop_signal_checkpoints_and_says_how_to_resume(prepared_dir, tmp_path, sig):
    run = tmp_path / "r"
    proc = _start_train(prepared_dir, run, "train.max_steps=100000", "train.valid_every=0")
    _wait_for(run / "train.log", proc, text=" | loss ")  # training has begun (log_every=1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {signal.Signals(sig).name} at step" in err
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


# ---------------------------------------------------------------- checkpoints


def _train_small_run(prepared_dir, run, steps, *extra):
    cfg = train_config(
        prepared_dir,
        run,
        f"train.max_steps={steps}",
        "train.valid_every=1",
        "train.valid_bleu=false",
        *extra,
    )
    return run_train(cfg)


def test_corrupt_or_foreign_files_are_clear_errors(prepared_dir, tmp_path):
    import os

    _train_small_run(prepared_dir, tmp_path / "r", 1)
    good = tmp_path / "r" / "checkpoints" / "last.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(MTError, match="is not a readable checkpoint"):
        load_checkpoint(truncated)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(5000))
    with pytest.raises(MTError, match="is not a readable checkpoint"):
        load_checkpoint(noise)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(MTError, match="is not an mt checkpoint"):
        load_checkpoint(foreign)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_loading_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "mt-checkpoint/1", "x": _Exploit(marker)}, evil)
    with pytest.raises(MTError, match="is not a readable checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_resume_falls_back_to_newest_readable_checkpoint(prepared_dir, tmp_path, caplog):
    run = tmp_path / "r"
    _train_small_run(prepared_dir, run, 3, "train.keep_last=3")
    # damage the newest step file in place: last.pt is the same file, so both are unreadable
    newest = run / "checkpoints" / "step_3.pt"
    newest.write_bytes(newest.read_bytes()[:2000])
    results = _train_small_run(prepared_dir, run, 5, "train.keep_last=3")
    assert results["step"] == 5
    log = (run / "train.log").read_text()
    assert "step_2.pt, the newest readable checkpoint" in log
    assert "resuming" in log and "from step 2" in log


def test_another_architecture_is_refused_on_resume(prepared_dir, tmp_path):
    run = tmp_path / "r"
    _train_small_run(prepared_dir, run, 1)
    with pytest.raises(MTError, match="other model settings or another vocabulary"):
        _train_small_run(prepared_dir, run, 2, "model.d_ff=128")


def test_another_vocabulary_of_any_size_is_refused_on_resume(prepared_dir, tmp_path):
    from mt.prepare import run_prepare

    run = tmp_path / "r"
    _train_small_run(prepared_dir, run, 1)
    spm_before = (run / "spm.model").read_bytes()
    other = tmp_path / "other"
    corpus = write_corpus(other / "corpus", {"train": 200, "valid": 10, "test": 10})
    run_prepare(prepare_config(corpus, other / "data"))
    with pytest.raises(MTError, match="was trained on another vocabulary"):
        _train_small_run(other / "data", run, 2)
    assert (run / "spm.model").read_bytes() == spm_before  # the run's own files are untouched


# ---------------------------------------------------------------- kill -9 at any moment


def _newest_step(run):
    steps = step_checkpoints(run / "checkpoints") if (run / "checkpoints").is_dir() else []
    return int(steps[-1].stem.split("_")[1]) if steps else 0


def test_kill_anywhere_then_resume_gives_the_uninterrupted_weights(prepared_dir, tmp_path):
    """kill -9 at random moments (mid-step and mid-write), resume, and compare with no kills.

    Each kill waits for the run to pass a randomly drawn step, then a random few milliseconds
    more, so kills land in training and in checkpoint writes (one is written every step) alike.
    """
    import os
    import random

    steps = 12
    common = (f"train.max_steps={steps}", "train.valid_every=1", "model.dropout=0.1")
    reference = tmp_path / "ref"
    ref = _start_train(prepared_dir, reference, *common)
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    run, rng, kills = tmp_path / "killed", random.Random(0), []
    for _ in range(int(os.environ.get("MT_KILL_LOOPS", "3"))):
        done = _newest_step(run)
        if done >= steps - 1:
            break
        target = rng.randint(done + 1, steps - 1)
        proc = _start_train(prepared_dir, run, *common)
        while proc.poll() is None and _newest_step(run) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        killed = proc.poll() is None
        if killed:
            proc.kill()
        proc.wait()
        if killed:
            kills.append(_newest_step(run))  # the newest complete step file it left
        for path in (run / "checkpoints").glob("*.pt"):
            load_checkpoint(path)  # every visible checkpoint is complete and readable
    final = _start_train(prepared_dir, run, *common)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert kills, "every run finished before it could be killed"
    assert f"resuming {run} from step {kills[-1]}" in err  # the newest complete checkpoint
    assert not list((run / "checkpoints").glob(".*tmp*"))  # killed writes were swept up
    a = load_checkpoint(reference / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_relinking_the_same_checkpoint_leaves_no_temp_file(tmp_path):
    from mt.checkpoint import link_checkpoint

    src = tmp_path / "step_1.pt"
    src.write_bytes(b"weights")
    link_checkpoint(src, tmp_path / "final.pt")
    link_checkpoint(src, tmp_path / "final.pt")  # a resumed run that links the same file again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.pt", "step_1.pt"]
    assert (tmp_path / "final.pt").samefile(src)
