"""Trainer: the training loop: mixed precision, accumulation, clipping, the validation and
checkpoint cadence, limits, and stop requests agreed on by every rank.

The Trainer receives built objects (model, optimizer, data, tracker, run folder, clock) and a
TrainLoopConfig of scalars; `mt.training.setup.build_trainer` builds them, and tests can build
them by hand. Its state types live in `mt.training.state`, the scoring of a split in
`mt.training.validation`, the checkpoint files in `mt.training.checkpoints`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from mt.checkpoint import FORMAT
from mt.config import TrainLoopConfig
from mt.data import Batch, ParallelData, epoch_batches
from mt.errors import MTError
from mt.rundir import RunDir
from mt.runtime import Dist, Heartbeat, all_reduce_max, all_reduce_sum, autocast
from mt.tokenizer import AnyTokenizer
from mt.tracking import Progress, Tracker
from mt.training.checkpoints import save_step
from mt.training.state import LogWindow, StepResult, Stopwatch, TrainState, limit_reached
from mt.training.stopping import EvaluationStopped, signal_number
from mt.training.validation import evaluate_split

log = logging.getLogger("mt.train")


class Trainer:
    """The training loop over objects built by run_train.

    Args:
        model: The bare model (checkpoints and validation use it).
        loss_fn: `Seq2SeqLoss` over the model, possibly wrapped in DDP or torch.compile.
        optimizer, scheduler, scaler: The update rule; the scaler is active only for fp16.
        train_data, valid_data: Splits to train on and validate on (None: no validation).
        tokenizer: Target tokenizer, to detokenize validation translations for BLEU.
        tracker: TensorBoard scalars (a no-op tracker on ranks other than 0).
        run: The run folder checkpoints go to.
        cfg: Loop scalars (batch size, cadence, limits).
        device, precision: Where and in which precision to compute.
        dist: This process' place in a torchrun job.
        clock: Training seconds, shared with the LR schedule; a fresh one if None.
        extra_state: Saved in every checkpoint as given (config, model args, vocabulary).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        train_data: ParallelData,
        valid_data: ParallelData | None,
        tokenizer: AnyTokenizer,
        tracker: Tracker,
        run: RunDir,
        cfg: TrainLoopConfig,
        device: torch.device,
        precision: str,
        dist: Dist | None = None,
        clock: Stopwatch | None = None,
        extra_state: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.loss_fn = model, loss_fn
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.train_data, self.valid_data, self.tokenizer = train_data, valid_data, tokenizer
        self.tracker, self.run, self.cfg = tracker, run, cfg
        self.device, self.precision, self.dist = device, precision, dist or Dist()
        self.heartbeat = Heartbeat(self.dist.rank, 1)  # mt.train gives it the job's store
        self.clock = clock or Stopwatch()
        self.extra_state = extra_state or {}
        self.state = TrainState()
        self.stop_reason = ""
        self.stop_signal = ""  # a stop request all ranks agreed on: checkpoint, then stop
        self._requested = ""  # set by request_stop (a signal handler), on this rank only
        self.validation_cut_short = False  # a stop request came during validation
        self.bad_steps = 0
        self._window = LogWindow()  # log scalars since the last log line

    def request_stop(self, signal_name: str) -> None:
        """Checkpoint and stop after the current step or validation batch (called by a signal
        handler); run_train also stops its end-of-run scoring between batches.

        Args:
            signal_name: The signal's name, e.g. "SIGTERM"; its number sets the exit status.
        """
        self._requested = signal_name

    @property
    def requested_signal(self) -> str:
        """The signal that asked this rank to stop ("" if none), before the ranks agree on it."""
        return self._requested

    # ------------------------------------------------------------------ one update

    def train_step(self, batches: list[Batch]) -> StepResult:
        """Forward/backward over `batches` (accumulated), then clip and step once."""
        self.model.train()
        n_tokens = all_reduce_sum([float(sum(b.n_tgt_tokens for b in batches))], self.device)[0]
        n_tokens /= self.dist.world  # DDP averages gradients over ranks
        loss_sum = nll_sum = 0.0
        for i, batch in enumerate(batches):
            batch = batch.to(self.device)
            no_sync = getattr(self.loss_fn, "no_sync", None)
            last = i == len(batches) - 1
            with no_sync() if (no_sync and not last) else contextlib.nullcontext():
                with autocast(self.precision, self.device):
                    loss, nll = self.loss_fn(
                        batch.src, batch.src_pad_mask, batch.tgt_in, batch.tgt_out
                    )
                self.scaler.scale(loss / n_tokens).backward()
            loss_sum, nll_sum = loss_sum + loss.detach(), nll_sum + nll
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.clip_norm if self.cfg.clip_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        finite = bool(torch.isfinite(grad_norm))
        if finite or self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # the fp16 scaler skips non-finite steps itself
        self.scaler.update()  # fp16: lowers the loss scale after a non-finite step
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            self.scheduler.step()
        tokens = float(sum(b.n_tgt_tokens for b in batches))
        return StepResult(
            float(loss_sum) / tokens, float(nll_sum) / tokens, tokens, float(grad_norm), finite
        )

    # ------------------------------------------------------------------ validation

    def validate(self, all_ranks: bool = True) -> dict[str, float]:
        """Validation loss (per target token) and, if enabled, greedy BLEU.

        Args:
            all_ranks: Every rank validates at once (training's validations): they agree on
                stop requests between batches. False: this rank alone (rank 0's end-of-run
                scoring), minding its own requests only, as no other rank is listening.

        Raises:
            EvaluationStopped: a stop was requested (SIGTERM, Ctrl-C) before the last batch.
        """
        assert self.valid_data is not None
        return evaluate_split(
            self.model,
            self.valid_data,
            self.tokenizer,
            self.precision,
            self.device,
            with_bleu=self.cfg.valid_bleu,
            prefix="valid",
            label_smoothing=self.cfg.label_smoothing,
            stop=self._agree_to_stop if all_ranks else lambda: self._requested,
        )

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds: every object's state, the RNGs, TrainState, extra_state."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "train_state": dataclasses.asdict(self.state),
            "precision": self.precision,  # what it trains in (train.precision=auto's choice)
            **self.extra_state,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Resume from a checkpoint written by `save` (a dict from `state_dict`)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        self.state = TrainState(**ckpt["train_state"])

    def save(self, is_best: bool) -> None:
        """Write step_<N>.pt, point last.pt (and best.pt) at it, prune old steps (rank 0)."""
        if not self.dist.is_main:
            return
        keep = max(self.cfg.keep_last, self.cfg.average_last, 1)
        save_step(self.run, self.state_dict(), self.state.step, is_best, keep)

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainState:
        """Train until a limit is reached; validates and checkpoints every valid_every steps.

        A stop request (request_stop) during a step or a validation checkpoints the current
        step and returns early with stop_signal set (validation_cut_short: unvalidated; a
        resumed run validates it first).
        """
        show = None if self.dist.is_main else False  # a bar on rank 0's terminal only
        with Progress(self.cfg.max_steps or None, self.state.step, show).active() as progress:
            return self._fit(progress)

    def _fit(self, progress: Progress) -> TrainState:
        state = self.state
        self.clock.resume(state.elapsed_s)
        if self._validation_missed():
            self._validate_and_save()  # a stop request cut it short last time
        self._window = LogWindow()
        while not self._stopping():
            if self._train_epoch(progress):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if not self.stop_signal and not self.state.validated():
            self._validate_and_save()
        if self.stop_signal:
            self.save(is_best=False)
            cut = ", its validation cut short" if self.validation_cut_short else ""
            self.stop_reason = (
                f"{self.stop_signal} received; checkpoint written at step {state.step}{cut}"
            )
            return state
        log.info(
            "stopped: %s (step %d, epoch %d, %.1f min)",
            self.stop_reason, state.step, state.epoch, state.elapsed_s / 60,
        )  # fmt: skip
        return state

    def _train_epoch(self, progress: Progress) -> bool:
        """Train on the rest of the current epoch; False if a limit or a signal cut it short."""
        for group in self._remaining_groups():
            step_start = time.perf_counter()
            result = self.train_step(group)
            self.state.batch_in_epoch += len(group)
            if not self._count_bad_step(result):
                continue
            self.state.step += 1
            step_s = time.perf_counter() - step_start
            progress.step(result.loss, result.tokens * self.dist.world / max(step_s, 1e-9))
            self._after_update(result)
            if self._stopping():
                return False
        return True

    def _after_update(self, result: StepResult) -> None:
        """Advance the clock, log every log_every steps, validate every valid_every steps."""
        state, cfg = self.state, self.cfg
        self.clock.tick()
        self._agree_with_ranks()
        self.heartbeat.step = state.step
        state.elapsed_s = self.clock()
        self._window.add(result)
        if state.step % cfg.log_every == 0:
            self._log_window(self._window)
            self._window = LogWindow()
        if cfg.valid_every and state.step % cfg.valid_every == 0 and not self.stop_signal:
            paused = time.perf_counter()
            self._validate_and_save()
            self._window.start += time.perf_counter() - paused  # tokens/s: training time only

    def _agree_with_ranks(self) -> None:
        """Settle the clock and stop requests after an update; under DDP, over all ranks.

        Every rank takes the slowest rank's clock and any rank's stop request, so all stop
        after the same update: one rank leaving early (past a time limit by its own clock, or
        signalled a moment before the others) would leave the rest waiting in the next
        all-reduce forever.
        """
        if self.dist.world == 1:
            self.stop_signal = self._requested
            return
        signum = signal_number(self._requested)
        elapsed, signum = all_reduce_max([self.clock(), float(signum)], self.device)
        self.clock.elapsed_s = elapsed
        if signum:
            self.stop_signal = signal.Signals(int(signum)).name

    def _agree_to_stop(self) -> str:
        """The stop signal any rank was asked for ("" if none); sets stop_signal.

        Under DDP a collective: every rank calls it at the same point (between the same two
        validation batches), so all of them stop at that batch and none waits for the others.
        """
        if self.dist.world == 1:
            self.stop_signal = self._requested
        else:
            signum = signal_number(self._requested)
            agreed = int(all_reduce_max([float(signum)], self.device)[0])
            if agreed:
                self.stop_signal = signal.Signals(agreed).name
        return self.stop_signal

    def _validation_missed(self) -> bool:
        """Whether the current step was due for validation but has no scores: its checkpoint
        was saved on a stop request (a resumed run validates it before training on)."""
        cfg, step = self.cfg, self.state.step
        due = bool(cfg.valid_every) and step > 0 and step % cfg.valid_every == 0
        return due and self.valid_data is not None and not self.state.validated()

    def _remaining_groups(self) -> Iterator[list[Batch]]:
        """The rest of the current epoch's batches from the saved position, update_freq at a
        time (a last group shorter than update_freq is left out)."""
        cfg, state = self.cfg, self.state
        batches = epoch_batches(
            self.train_data, cfg.max_tokens, cfg.seed, state.epoch, self.dist.rank, self.dist.world
        )
        if len(batches) < cfg.update_freq:
            raise MTError(
                f"an epoch has {len(batches)} batches per process, fewer than "
                f"train.update_freq={cfg.update_freq}: use more data or smaller batches."
            )
        remaining = batches[state.batch_in_epoch :]
        for i in range(0, len(remaining) - cfg.update_freq + 1, cfg.update_freq):
            yield [self.train_data.collate(ids) for ids in remaining[i : i + cfg.update_freq]]

    def _stopping(self) -> bool:
        """True once a stop signal came or a limit is reached (sets stop_reason)."""
        if self.stop_signal:
            return True
        if reason := limit_reached(self.cfg, self.state):
            self.stop_reason = reason
        return bool(self.stop_reason)

    def _validate_and_save(self) -> None:
        """Validate the current step, record its scores and checkpoint it; a stop request
        during validation leaves both to _fit (stop_signal is set by then)."""
        try:
            metrics = self.validate() if self.valid_data is not None else {}
        except EvaluationStopped:
            self.validation_cut_short = True
            return
        is_best = self.state.record_validation(metrics)
        if metrics:
            self.tracker.scalars(metrics, self.state.step)
            shown = " ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in metrics.items())
            best = " (best)" if is_best else ""
            log.info(
                "step %d epoch %d | valid %s%s", self.state.step, self.state.epoch, shown, best
            )
        self.save(is_best)

    def _count_bad_step(self, result: StepResult) -> bool:
        """Track non-finite steps; True if this step counts (its update was applied)."""
        if result.applied:
            self.bad_steps = 0
            return True
        self.bad_steps += 1
        log.warning(
            "step %d: non-finite loss or gradient (loss %s, grad norm %s); update skipped "
            "(%d in a row)", self.state.step + 1, result.loss, result.grad_norm, self.bad_steps,
        )  # fmt: skip
        if self.bad_steps >= self.cfg.max_bad_steps:
            raise MTError(
                f"{self.bad_steps} consecutive steps had a non-finite loss or gradient "
                f"(train.max_bad_steps={self.cfg.max_bad_steps}); the run stopped at step "
                f"{self.state.step}: lower train.lr, or use train.precision=fp32."
            )
        return False

    def _log_window(self, window: LogWindow) -> None:
        """Log the window's scalars to TensorBoard and one line to the log."""
        scalars = window.scalars(self.scheduler.get_last_lr()[0], self.dist.world)
        self.tracker.scalars(scalars, self.state.step)
        log.info(
            "step %d epoch %d | loss %.3f ppl %.2f lr %.2e gnorm %.2f | %.0f tgt tok/s",
            self.state.step,
            self.state.epoch,
            scalars["train/loss"],
            scalars["train/ppl"],
            scalars["train/lr"],
            scalars["train/grad_norm"],
            scalars["train/tokens_per_s"],
        )
