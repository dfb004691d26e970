"""What the training loop keeps between steps: `TrainState` (saved in every checkpoint, with its
record of validations) and the limits that end training at it, `Stopwatch` (training seconds
across sessions), `StepResult` (one update) and `LogWindow` (the step results between two log
lines, as scalars).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from mt.config import TrainLoopConfig


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

    def validated(self) -> bool:
        """Whether the current step has been validated (is the newest entry in the history)."""
        return bool(self.history) and self.history[-1]["step"] == self.step

    def record_validation(self, metrics: dict[str, float]) -> bool:
        """Count a validation of the current step; True if it is the best so far.

        The score is validation BLEU if `metrics` has it, else minus the loss (0 without
        metrics). A best score resets the early-stopping count, any other raises it; metrics
        join the history.
        """
        score = metrics.get("valid/bleu", -metrics.get("valid/loss", 0.0))
        is_best = self.best_score is None or score > self.best_score
        if is_best:
            self.best_score, self.best_step = score, self.step
            self.bad_validations = 0
        else:
            self.bad_validations += 1
        if metrics:
            self.history.append({"step": self.step, **metrics})
        return is_best


def limit_reached(cfg: TrainLoopConfig, state: TrainState) -> str:
    """Why training stops at `state` ("" if it goes on): a step, epoch or time limit of
    `cfg`, or its patience run out (early stopping)."""
    if cfg.max_steps and state.step >= cfg.max_steps:
        return f"reached train.max_steps={cfg.max_steps}"
    if cfg.max_epochs and state.epoch >= cfg.max_epochs:
        return f"reached train.max_epochs={cfg.max_epochs}"
    if cfg.max_minutes and state.elapsed_s >= cfg.max_minutes * 60:
        return f"reached train.max_minutes={cfg.max_minutes:g}"
    if cfg.patience and state.bad_validations >= cfg.patience:
        return f"no improvement in {cfg.patience} validations (early stopping)"
    return ""


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
class LogWindow:
    """Token-weighted sums of step results between two log lines."""

    loss: float = 0.0
    nll: float = 0.0
    tokens: float = 0.0
    grad_norm: float = 0.0
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, result: StepResult) -> None:
        """Count one applied update."""
        self.loss += result.loss * result.tokens
        self.nll += result.nll * result.tokens
        self.tokens += result.tokens
        self.grad_norm += result.grad_norm
        self.steps += 1

    def scalars(self, lr: float, world: int) -> dict[str, float]:
        """The window's train/ scalars: loss and perplexity per target token, `lr`, the mean
        gradient norm, and target tokens per second over all `world` ranks."""
        tokens, seconds = max(self.tokens, 1.0), time.perf_counter() - self.start
        return {
            "train/loss": self.loss / tokens,
            "train/ppl": math.exp(min(self.nll / tokens, 50)),
            "train/lr": lr,
            "train/grad_norm": self.grad_norm / max(self.steps, 1),
            "train/tokens_per_s": self.tokens * world / max(seconds, 1e-9),
        }
