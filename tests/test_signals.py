"""SIGTERM / Ctrl-C at every phase of `mt train`, and the size of validation batches.

The signal tests send real signals to a real `mt train` subprocess. Validation and test lines
are long (eight toy sentences each), so greedy decoding of a barely trained model makes each
evaluation last seconds (4-9 s on 2 CPU cores) in batches of a fraction of a second; the signal
goes out when train.log shows that the phase has begun.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from mt.checkpoint import load_checkpoint
from mt.config import DecodeConfig
from mt.data import ParallelData
from mt.prepare import run_prepare
from tests.conftest import make_pairs, prepare_config, write_corpus
from tests.test_cli import MT
from tests.test_trainer import make_trainer

JOINED = 8  # toy sentences per validation / test line: long outputs, slow greedy decoding
STOP_WITHIN_S = 30  # generous: each evaluation batch takes well under a second here


@pytest.fixture(scope="module")
def slow_eval_dir(tmp_path_factory):
    """A prepared data folder with 300 short training pairs and 1200 long valid/test pairs."""
    root = tmp_path_factory.mktemp("slow_eval")
    corpus = write_corpus(root / "corpus", {"train": 300, "valid": 1, "test": 1})
    for seed, split in enumerate(("valid", "test"), start=10):
        en, de = make_pairs(1200 * JOINED, seed)
        for side, lines in (("en", en), ("de", de)):
            joined = [" ".join(lines[i : i + JOINED]) for i in range(0, len(lines), JOINED)]
            (corpus / f"{split}.{side}").write_text("\n".join(joined) + "\n", encoding="utf-8")
    run_prepare(prepare_config(corpus, root / "data"))
    return root / "data"


def _start_train(data_dir, run_dir, *extra):
    args = [
        *MT.split(), "train", f"data_dir={data_dir}", f"run_dir={run_dir}", "model=tiny",
        "train.device=cpu", "train.tune_decoding=false", "train.precision=fp32",
        "train.threads=1", "train.max_tokens=256",
        "train.max_steps=2", "train.valid_bleu=true", "train.log_every=1", *extra,
    ]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(run_dir, proc, text, timeout=300):
    """Wait until train.log holds `text` (the run must still be going)."""
    log, start = run_dir / "train.log", time.monotonic()
    while not (log.is_file() and text in log.read_text()):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() - start < timeout, f"no {text!r} in train.log"
        time.sleep(0.02)


# phase: (train.log line that says the phase has begun, extra overrides, what stderr says)
PHASES = {
    "final validation": (
        "step 2 epoch 0 | loss",  # the last update: the end-of-training validation follows
        ("train.valid_every=0",),
        "stopped by {sig} at step 2; checkpoint saved before its validation finished. "
        "Run the same command again to validate it and resume.",
    ),
    "averaging": (
        "averaged step_1.pt, step_2.pt into",  # averaged.pt's validation follows
        ("train.valid_every=1", "train.average_last=2"),
        "stopped by {sig} during checkpoint averaging; checkpoints are saved, "
        "run the same command again to finish.",
    ),
    "test decode": (
        "stopped: reached train.max_steps=2",  # final.pt is linked, then the test decode
        ("train.valid_every=0",),
        "stopped by {sig} during the final test decode; checkpoints are saved, "
        "run the same command again to finish.",
    ),
}


@pytest.mark.parametrize(
    ("phase", "sig"),
    [
        ("final validation", signal.SIGTERM),
        ("final validation", signal.SIGINT),
        ("averaging", signal.SIGTERM),
        ("test decode", signal.SIGTERM),
    ],
    ids=["final-validation-SIGTERM", "final-validation-Ctrl-C", "averaging", "test-decode"],
)
def test_a_signal_in_an_end_of_training_phase_stops_it_and_a_rerun_finishes(
    slow_eval_dir, tmp_path, phase, sig
):
    line, extra, said = PHASES[phase]
    run = tmp_path / "r"
    proc = _start_train(slow_eval_dir, run, *extra)
    _wait_for_line(run, proc, line)
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{sig.name} during the {phase} was not honoured in {STOP_WITHIN_S} s")
    took = time.monotonic() - sent
    assert proc.returncode == 128 + sig, err
    assert said.format(sig=sig.name) in err, err
    assert "Traceback" not in err
    assert not (run / "results.json").exists()
    print(f"{phase} {sig.name}: exited {took:.1f} s after the signal")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["step"] == 2
    again = _start_train(slow_eval_dir, run, *extra)  # the same command
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"resuming {run} from step 2" in err
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 2 and "test/bleu" in results
    assert results["history"][-1]["step"] == 2  # the step's validation was done
    if phase == "averaging":
        assert "averaged_valid" in results


def test_a_stop_during_periodic_validation_checkpoints_and_the_resume_validates_first(
    prepared_dir, tmp_path
):
    trainer = make_trainer(prepared_dir, tmp_path, max_steps=4, valid_every=2)
    trainer.valid_data = ParallelData(prepared_dir, "train", 64)  # 300 pairs: several batches
    collate, batches = trainer.valid_data.collate, []

    def stop_on_the_first_validation_batch(ids):
        batches.append(len(ids))
        trainer.request_stop("SIGTERM")  # as the SIGTERM handler of run_train does
        return collate(ids)

    trainer.valid_data.collate = stop_on_the_first_validation_batch
    state = trainer.fit()
    assert trainer.stop_signal == "SIGTERM" and state.step == 2
    assert len(batches) == 1  # nothing more was decoded after the request
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["train_state"]["step"] == 2 and ckpt["train_state"]["history"] == []
    resumed = make_trainer(prepared_dir, tmp_path, max_steps=4, valid_every=2)
    resumed.load_state_dict(ckpt)
    state = resumed.fit()
    assert [h["step"] for h in state.history] == [2, 4]  # step 2's validation came first


def test_validation_batches_follow_the_decode_defaults_not_train_max_tokens(prepared_dir, tmp_path):
    trainer = make_trainer(prepared_dir, tmp_path, max_tokens=64)  # about 5 pairs per batch
    trainer.valid_data = ParallelData(prepared_dir, "train", 64)  # 300 pairs of 4-34 tokens
    collate, sizes = trainer.valid_data.collate, []
    trainer.valid_data.collate = lambda ids: sizes.append(len(ids)) or collate(ids)
    trainer.validate()
    # DecodeConfig's 4096 tokens hold 120 pairs of 34 tokens: its 64 sentences per batch bind
    assert DecodeConfig().batch_size == 64
    assert sizes == [64, 64, 64, 64, 44]
