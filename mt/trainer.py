"""Trainer: the training loop: mixed precision, accumulation, clipping, validation, checkpoints.

The Trainer receives built objects (model, optimizer, data, tracker, run folder, clock) and a
TrainLoopConfig of scalars; `mt.train.run_train` builds them, and tests can build them by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mt.checkpoint import (
    FORMAT,
    average_checkpoints,
    link_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from mt.config import DecodeConfig, TrainLoopConfig
from mt.data import Batch, ParallelData, batches_by_tokens, epoch_batches
from mt.decode.greedy import greedy_search
from mt.decode.search import Limits
from mt.errors import FileFault, MTError
from mt.loss import Seq2SeqLoss
from mt.metrics import bleu
from mt.rundir import RunDir
from mt.runtime import Dist, all_reduce_max, all_reduce_sum, autocast
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from mt.tracking import Progress, Tracker

log = logging.getLogger("mt.train")


class EvaluationStopped(Exception):
    """An evaluation cut short between two batches by a stop request (SIGTERM, Ctrl-C).

    Never reaches the CLI: the trainer checkpoints and stops, run_train raises Stopped.
    """

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"evaluation stopped by {signal_name}")
        self.signal_name = signal_name


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed_s: float = 0.0
    best_score: float | None = None
    best_step: int = 0
    bad_validations: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class Stopwatch:
    """Training seconds of a run across sessions, read by the trainer and the LR schedule.

    It reads 0 until `resume` starts it, then what earlier sessions trained plus this
    session's wall time as of the last `tick` (under DDP the trainer then sets the slowest
    rank's reading, so every rank's schedule and limits see the same time).
    """

    def __init__(self) -> None:
        self.elapsed_s = 0.0
        self._before = 0.0
        self._start: float | None = None

    def resume(self, elapsed_s: float) -> None:
        """Start timing this session on top of `elapsed_s` seconds trained before."""
        self._before, self._start, self.elapsed_s = elapsed_s, time.perf_counter(), elapsed_s

    def tick(self) -> float:
        """Read the clock: seconds trained so far, this session included."""
        if self._start is not None:
            self.elapsed_s = self._before + time.perf_counter() - self._start
        return self.elapsed_s

    def __call__(self) -> float:
        """The last reading (what `mt.optim.linear_decay` calls its clock)."""
        return self.elapsed_s


@dataclass
class StepResult:
    """One optimizer step: its loss and size, and whether the update was applied."""

    loss: float  # label-smoothed loss per target token
    nll: float  # negative log-likelihood per target token
    tokens: float  # target tokens on this rank
    grad_norm: float  # before clipping
    applied: bool  # False: a non-finite loss or gradient, the update was skipped


@dataclass
class _Window:
    """Token-weighted sums of step results between two log lines."""

    loss: float = 0.0
    nll: float = 0.0
    tokens: float = 0.0
    grad_norm: float = 0.0
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, result: StepResult) -> None:
        self.loss += result.loss * result.tokens
        self.nll += result.nll * result.tokens
        self.tokens += result.tokens
        self.grad_norm += result.grad_norm
        self.steps += 1


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
        tokenizer: Tokenizer,
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
        self.clock = clock or Stopwatch()
        self.extra_state = extra_state or {}
        self.state = TrainState()
        self.stop_reason = ""
        self.stop_signal = ""  # a stop request all ranks agreed on: checkpoint, then stop
        self._requested = ""  # set by request_stop (a signal handler), on this rank only
        self.validation_cut_short = False  # a stop request came during validation
        self.bad_steps = 0
        self._window = _Window()  # log scalars since the last log line

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
            **self.extra_state,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
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
        run = self.run
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        path = run.step(self.state.step)
        try:
            save_checkpoint(self.state_dict(), path)
            link_checkpoint(path, run.last)
            if is_best:
                link_checkpoint(path, run.best)
        except (OSError, FileFault) as exc:  # disk full, quota, read-only, torch's writer ...
            cause = (
                str(exc).rstrip(".")  # already one sentence naming the file and the reason
                if isinstance(exc, FileFault)
                else f"cannot write checkpoint {path} ({exc.strerror or exc})"
            )
            raise MTError(
                f"{cause}; training stopped at step {self.state.step}, and {run.last} still "
                "holds the previous one."
            ) from None
        prune_checkpoints(run.checkpoints, max(self.cfg.keep_last, self.cfg.average_last, 1))

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
        self._window = _Window()
        while not self._stopping():
            if self._train_epoch(progress):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if not self.stop_signal and not self._validated():
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
        state.elapsed_s = self.clock()
        self._window.add(result)
        if state.step % cfg.log_every == 0:
            self._log_window(self._window)
            self._window = _Window()
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
        signum = signal.Signals[self._requested].value if self._requested else 0
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
            signum = signal.Signals[self._requested].value if self._requested else 0
            agreed = int(all_reduce_max([float(signum)], self.device)[0])
            if agreed:
                self.stop_signal = signal.Signals(agreed).name
        return self.stop_signal

    def _validated(self) -> bool:
        """Whether the current step has been validated (is the newest entry in the history)."""
        history = self.state.history
        return bool(history) and history[-1]["step"] == self.state.step

    def _validation_missed(self) -> bool:
        """Whether the current step was due for validation but has no scores: its checkpoint
        was saved on a stop request (a resumed run validates it before training on)."""
        cfg, step = self.cfg, self.state.step
        due = bool(cfg.valid_every) and step > 0 and step % cfg.valid_every == 0
        return due and self.valid_data is not None and not self._validated()

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
        cfg, state = self.cfg, self.state
        if cfg.max_steps and state.step >= cfg.max_steps:
            self.stop_reason = f"reached train.max_steps={cfg.max_steps}"
        elif cfg.max_epochs and state.epoch >= cfg.max_epochs:
            self.stop_reason = f"reached train.max_epochs={cfg.max_epochs}"
        elif cfg.max_minutes and state.elapsed_s >= cfg.max_minutes * 60:
            self.stop_reason = f"reached train.max_minutes={cfg.max_minutes:g}"
        elif cfg.patience and state.bad_validations >= cfg.patience:
            self.stop_reason = f"no improvement in {cfg.patience} validations (early stopping)"
        return bool(self.stop_reason)

    def _validate_and_save(self) -> None:
        """Validate the current step, record its scores and checkpoint it; a stop request
        during validation leaves both to _fit (stop_signal is set by then)."""
        try:
            metrics = self.validate() if self.valid_data is not None else {}
        except EvaluationStopped:
            self.validation_cut_short = True
            return
        score = metrics.get("valid/bleu", -metrics.get("valid/loss", 0.0))
        is_best = self.state.best_score is None or score > self.state.best_score
        if is_best:
            self.state.best_score, self.state.best_step = score, self.state.step
            self.state.bad_validations = 0
        else:
            self.state.bad_validations += 1
        if metrics:
            self.state.history.append({"step": self.state.step, **metrics})
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

    def _log_window(self, window: _Window) -> None:
        tokens, seconds = max(window.tokens, 1.0), time.perf_counter() - window.start
        scalars = {
            "train/loss": window.loss / tokens,
            "train/ppl": math.exp(min(window.nll / tokens, 50)),
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": window.grad_norm / max(window.steps, 1),
            "train/tokens_per_s": window.tokens * self.dist.world / max(seconds, 1e-9),
        }
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


def eval_batch_ids(data: ParallelData) -> list[np.ndarray]:
    """Deterministic length-sorted batches covering every pair once (validation, test).

    Sized like `mt translate`'s batches (DecodeConfig's max_tokens and batch_size defaults),
    never like training's: a small train.max_tokens must not make every validation crawl.
    """
    decode = DecodeConfig()
    lens = np.maximum(data.src_lens, data.tgt_lens)  # teacher forcing pads both sides
    order = np.argsort(data.src_lens, kind="stable")
    return batches_by_tokens(order, lens, decode.max_tokens, max_sentences=decode.batch_size)


@torch.no_grad()  # not inference_mode: see mt.search
def evaluate_split(
    model: nn.Module,
    data: ParallelData,
    tokenizer: Tokenizer,
    precision: str,
    device: torch.device,
    with_bleu: bool,
    prefix: str,
    label_smoothing: float = 0.0,
    stop: Callable[[], str] | None = None,
) -> dict[str, float]:
    """Loss per target token, perplexity and (if `with_bleu`) greedy BLEU of one split.

    Runs on the bare model (not a DDP wrapper), so one rank can evaluate alone; its batches
    are `eval_batch_ids`.

    Args:
        stop: Asked before every batch; a signal name ("SIGTERM") abandons the split, ""
            goes on. None: never stop.

    Raises:
        EvaluationStopped: `stop` returned a signal name.
    """
    model.eval()
    loss_fn = Seq2SeqLoss(model, label_smoothing, PAD_ID)
    loss_sum = nll_sum = tokens = 0.0
    hyps: dict[int, str] = {}
    limits = Limits(BOS_ID, EOS_ID, max_len=data.max_len - 1)  # bos takes one of the positions
    for ids in eval_batch_ids(data):
        if stop is not None and (signal_name := stop()):
            raise EvaluationStopped(signal_name)
        batch = data.collate(ids).to(device)
        with autocast(precision, device):
            loss, nll = loss_fn(batch.src, batch.src_pad_mask, batch.tgt_in, batch.tgt_out)
            if with_bleu:
                found = greedy_search(model, batch.src, batch.src_pad_mask, limits)
                texts = tokenizer.decode([h.tokens for h in found])
                hyps.update(zip(batch.ids.tolist(), texts, strict=True))
        loss_sum, nll_sum = loss_sum + float(loss), nll_sum + float(nll)
        tokens += batch.n_tgt_tokens
    metrics = {
        f"{prefix}/loss": loss_sum / tokens,
        f"{prefix}/ppl": math.exp(min(nll_sum / tokens, 50)),
    }
    if with_bleu:
        refs = tokenizer.decode([data.tgt[i].tolist() for i in range(len(data))])
        metrics[f"{prefix}/bleu"] = bleu([hyps[i] for i in range(len(refs))], [refs]).score
    return metrics


def average_last(run: RunDir, n: int) -> Path | None:
    """Average the last `n` step checkpoints into averaged.pt; None if fewer than 2 exist."""
    steps = run.steps()[-n:]
    if len(steps) < 2:
        return None
    out = run.averaged
    save_checkpoint(average_checkpoints(steps), out)
    log.info("averaged %s into %s", ", ".join(p.name for p in steps), out)
    return out


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
