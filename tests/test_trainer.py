"""Trainer built by hand: skipped non-finite steps, the fp16 loss scale, stop requests, the clock.

Every collaborator is passed in, so a test swaps one (a poisoned loss, an enabled GradScaler)
without patching module globals.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from mt.checkpoint import load_checkpoint
from mt.config import TrainLoopConfig
from mt.data import ParallelData
from mt.errors import MTError
from mt.loss import Seq2SeqLoss
from mt.model import transformer
from mt.optim import build_optimizer, build_scheduler
from mt.rundir import RunDir
from mt.tokenizer import PAD_ID, Tokenizer
from mt.tracking import Tracker
from mt.training.state import Stopwatch
from mt.training.trainer import Trainer


class PoisonedLoss(nn.Module):
    """Seq2SeqLoss that poisons the training calls in `bad_calls` (0-based; -1: every call).

    "nan_loss" makes the loss NaN; "inf_grad" keeps the loss finite and turns its gradient,
    and so every parameter's gradient, into inf. `on_call` runs before each training call.
    """

    def __init__(self, model, bad_calls=(), mode="nan_loss", on_call=None):
        super().__init__()
        self.inner = Seq2SeqLoss(model, 0.1, PAD_ID)
        self.bad_calls, self.mode, self.on_call, self.calls = set(bad_calls), mode, on_call, 0

    def forward(self, *args):
        loss, nll = self.inner(*args)
        if not self.training:
            return loss, nll
        call, self.calls = self.calls, self.calls + 1
        if self.on_call is not None:
            self.on_call(call)
        if call in self.bad_calls or -1 in self.bad_calls:
            if self.mode == "nan_loss":
                loss = loss * float("nan")
            else:
                loss.register_hook(lambda grad: grad * float("inf"))
        return loss, nll


def make_trainer(data_dir, run_root, scaler=None, schedule="inverse_sqrt", **loop):
    """A tiny fp32 CPU Trainer on the prepared data; `loop` overrides TrainLoopConfig fields."""
    torch.manual_seed(0)
    tokenizer = Tokenizer(data_dir / "spm.model")
    vocab = tokenizer.vocab_size
    model = transformer(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=32, n_heads=2,
                        n_layers_enc=1, n_layers_dec=1, d_ff=64, dropout=0.0)  # fmt: skip
    cfg = TrainLoopConfig(**{"max_tokens": 512, "valid_every": 0, "log_every": 1, **loop})
    optimizer = build_optimizer(model, 1e-3, (0.9, 0.98), 1e-8, 0.0, torch.device("cpu"))
    clock = Stopwatch()
    return Trainer(
        model=model,
        loss_fn=Seq2SeqLoss(model, 0.1, PAD_ID),
        optimizer=optimizer,
        scheduler=build_scheduler(
            optimizer, 2, schedule, cfg.max_steps, cfg.max_minutes * 60, clock
        ),  # fmt: skip
        scaler=scaler or torch.amp.GradScaler("cpu", enabled=False),
        train_data=ParallelData(data_dir, "train", 64),
        valid_data=ParallelData(data_dir, "valid", 64),
        tokenizer=tokenizer,
        tracker=Tracker(None),
        run=RunDir(run_root),
        cfg=cfg,
        device=torch.device("cpu"),
        precision="fp32",
        clock=clock,
    )


@pytest.mark.parametrize("mode", ["nan_loss", "inf_grad"])
def test_non_finite_steps_are_skipped_and_logged(prepared_dir, tmp_path, caplog, mode):
    trainer = make_trainer(prepared_dir, tmp_path, max_steps=4, valid_bleu=False)
    trainer.loss_fn = poisoned = PoisonedLoss(trainer.model, {1, 2}, mode)
    with caplog.at_level(logging.WARNING, logger="mt.train"):
        state = trainer.fit()
    assert state.step == 4 and poisoned.calls == 6  # two calls skipped, four updates
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert "step 2: non-finite loss or gradient" in caplog.text
    assert "update skipped (1 in a row)" in caplog.text
    assert "update skipped (2 in a row)" in caplog.text


def test_non_finite_steps_lower_the_fp16_loss_scale(prepared_dir, tmp_path):
    # fp16 needs CUDA; the scaler's bookkeeping is the same on CPU, so pass an enabled one
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer = make_trainer(prepared_dir, tmp_path, scaler, max_steps=3, valid_bleu=False)
    trainer.loss_fn = PoisonedLoss(trainer.model, {1, 2}, "inf_grad")
    assert trainer.fit().step == 3
    assert scaler.get_scale() == 1024.0 * 0.5 * 0.5  # halved once per skipped step
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["scaler"]["scale"] == 256.0


def test_too_many_non_finite_steps_stop_the_run(prepared_dir, tmp_path):
    trainer = make_trainer(prepared_dir, tmp_path, max_steps=10, max_bad_steps=3)
    trainer.loss_fn = PoisonedLoss(trainer.model, {-1})
    with pytest.raises(MTError, match="3 consecutive steps had a non-finite"):
        trainer.fit()


def test_a_stop_request_checkpoints_the_current_step_and_stops(prepared_dir, tmp_path):
    trainer = make_trainer(prepared_dir, tmp_path, max_steps=50, valid_bleu=False)

    def stop_at_third_call(call: int) -> None:
        if call == 2:
            trainer.request_stop("SIGTERM")  # as the SIGTERM handler of run_train does

    trainer.loss_fn = PoisonedLoss(trainer.model, on_call=stop_at_third_call)
    state = trainer.fit()
    assert state.step == 3  # the step in flight completes, then the loop stops
    assert "SIGTERM received" in trainer.stop_reason
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["train_state"]["step"] == 3


def test_accumulated_steps_advance_the_data_position_by_update_freq(prepared_dir, tmp_path):
    trainer = make_trainer(prepared_dir, tmp_path, max_steps=3, update_freq=2, valid_bleu=False)
    state = trainer.fit()
    assert state.step == 3 and state.epoch == 0 and state.batch_in_epoch == 6


def test_the_schedule_and_the_trainer_read_one_clock(prepared_dir, tmp_path):
    trainer = make_trainer(
        prepared_dir, tmp_path, schedule="linear", max_steps=4, max_minutes=60.0,
        valid_bleu=False,
    )  # fmt: skip
    assert trainer.clock() == 0.0  # nothing trained yet: the schedule sees no pace
    state = trainer.fit()
    assert state.elapsed_s == trainer.clock() > 0.0
    clock = Stopwatch()
    clock.resume(100.0)  # a resumed run counts the seconds trained before
    assert clock() == 100.0 and clock.tick() >= 100.0
