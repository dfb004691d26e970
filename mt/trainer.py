"""Trainer: the training loop: mixed precision, accumulation, clipping, validation, checkpoints.

The Trainer receives built objects (model, optimizer, data, tracker) and a TrainLoopConfig of
scalars; `mt.train.run_train` builds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mt.checkpoint import (
    FORMAT,
    average_checkpoints,
    link_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_checkpoints,
)
from mt.config import TrainLoopConfig
from mt.data import Batch, ParallelData, epoch_batches, eval_batches
from mt.errors import MTError
from mt.loss import Seq2SeqLoss
from mt.metrics import bleu
from mt.runtime import Dist, all_reduce_max, all_reduce_sum, autocast
from mt.search import greedy_search
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from mt.tracking import Progress, Tracker

log = logging.getLogger("mt.train")


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


@dataclass
class RunPaths:
    """Files of a run folder."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"


class Trainer:
    """The training loop over objects built by run_train."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        train_data: ParallelData,
        valid_data: ParallelData | None,
        tokenizer: Tokenizer,
        tracker: Tracker,
        paths: RunPaths,
        cfg: TrainLoopConfig,
        device: torch.device,
        precision: str,
        dist: Dist,
        extra_state: dict[str, Any],
    ) -> None:
        self.model, self.loss_fn = model, loss_fn
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.train_data, self.valid_data, self.tokenizer = train_data, valid_data, tokenizer
        self.tracker, self.paths, self.cfg = tracker, paths, cfg
        self.device, self.precision, self.dist = device, precision, dist
        self.extra_state = extra_state  # config, model args, vocabulary: saved as they are
        self.state = TrainState()
        self.stop_reason = ""
        self.stop_signal = ""  # set by a SIGTERM/SIGINT handler: checkpoint, then stop
        self.bad_steps = 0

    # ------------------------------------------------------------------ one update

    def train_step(self, batches: list[Batch]) -> dict[str, float]:
        """Forward/backward over `batches` (accumulated), then clip and step once."""
        self.model.train()
        n_tokens = all_reduce_sum([float(sum(b.n_tgt_tokens for b in batches))], self.device)[0]
        n_tokens /= self.dist.world  # DDP averages gradients over ranks
        loss_sum = nll_sum = 0.0
        for i, batch in enumerate(batches):
            batch = batch.to(self.device)
            last = i == len(batches) - 1
            no_sync = getattr(self.loss_fn, "no_sync", None)
            sync_ctx = no_sync() if (no_sync and not last) else contextlib.nullcontext()
            with sync_ctx:
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
        return {
            "loss": float(loss_sum) / tokens,
            "nll": float(nll_sum) / tokens,
            "tokens": tokens,
            "grad_norm": float(grad_norm),
            "finite": finite,
        }

    # ------------------------------------------------------------------ validation

    def validate(self) -> dict[str, float]:
        """Validation loss (per target token) and, if enabled, greedy BLEU."""
        assert self.valid_data is not None
        return evaluate_split(
            self.model,
            self.valid_data,
            self.tokenizer,
            self.cfg.max_tokens,
            self.precision,
            self.device,
            with_bleu=self.cfg.valid_bleu,
            prefix="valid",
            label_smoothing=self.cfg.label_smoothing,
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
        self.paths.checkpoints.mkdir(parents=True, exist_ok=True)
        path = self.paths.checkpoints / f"step_{self.state.step}.pt"
        try:
            save_checkpoint(self.state_dict(), path)
            link_checkpoint(path, self.paths.last)
            if is_best:
                link_checkpoint(path, self.paths.best)
        except OSError as exc:  # disk full, quota, read-only file system ...
            raise MTError(
                f"cannot write checkpoint {path} ({exc.strerror or exc}); training stopped at "
                f"step {self.state.step}, and {self.paths.last} still holds the previous one."
            ) from None
        prune_checkpoints(self.paths.checkpoints, max(self.cfg.keep_last, self.cfg.average_last, 1))

    # ------------------------------------------------------------------ the loop

    def _should_stop(self) -> bool:
        cfg, state = self.cfg, self.state
        if self.dist.world > 1:  # ranks must agree on the clock, or one would wait forever
            state.elapsed_s = all_reduce_max(state.elapsed_s, self.device)
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
        metrics = self.validate() if self.valid_data is not None else {}
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
            log.info(
                "step %d epoch %d | valid %s%s",
                self.state.step,
                self.state.epoch,
                shown,
                " (best)" if is_best else "",
            )
        self.save(is_best)

    def _batches_from(self) -> list:
        """The rest of the current epoch's batches, from the saved position on."""
        cfg, state = self.cfg, self.state
        batches = epoch_batches(
            self.train_data, cfg.max_tokens, cfg.seed, state.epoch, self.dist.rank, self.dist.world
        )
        if len(batches) < cfg.update_freq:
            raise MTError(
                f"an epoch has {len(batches)} batches per process, fewer than "
                f"train.update_freq={cfg.update_freq}: use more data or smaller batches."
            )
        return batches[state.batch_in_epoch :]

    def fit(self) -> TrainState:
        """Train until a limit is reached; validates and checkpoints every valid_every steps."""
        show = None if self.dist.is_main else False  # a bar on rank 0's terminal only
        with Progress(self.cfg.max_steps or None, self.state.step, show).active() as progress:
            return self._fit(progress)

    def _fit(self, progress: Progress) -> TrainState:
        cfg, state = self.cfg, self.state
        window = {"loss": 0.0, "nll": 0.0, "tokens": 0.0, "grad_norm": 0.0, "steps": 0}
        session_start, elapsed_before = time.perf_counter(), state.elapsed_s
        window_start = time.perf_counter()
        while not self._should_stop() and not self.stop_signal:
            remaining = self._batches_from()
            for i in range(0, len(remaining) - cfg.update_freq + 1, cfg.update_freq):
                group = [self.train_data.collate(ids) for ids in remaining[i : i + cfg.update_freq]]
                step_start = time.perf_counter()
                out = self.train_step(group)
                state.batch_in_epoch += cfg.update_freq
                if not self._count_bad_step(out):
                    continue
                state.step += 1
                step_s = time.perf_counter() - step_start
                progress.step(out["loss"], out["tokens"] * self.dist.world / max(step_s, 1e-9))
                state.elapsed_s = elapsed_before + time.perf_counter() - session_start
                for key in ("loss", "nll", "tokens", "grad_norm"):
                    window[key] += out[key] * (out["tokens"] if key in ("loss", "nll") else 1)
                window["steps"] += 1
                if state.step % cfg.log_every == 0:
                    self._log_window(window, time.perf_counter() - window_start)
                    window = dict.fromkeys(window, 0.0)
                    window_start = time.perf_counter()
                if cfg.valid_every and state.step % cfg.valid_every == 0:
                    paused = time.perf_counter()
                    self._validate_and_save()
                    window_start += time.perf_counter() - paused  # tokens/s: training time only
                if self._should_stop() or self.stop_signal:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
        if self.stop_signal:
            self.save(is_best=False)
            self.stop_reason = (
                f"{self.stop_signal} received; checkpoint written at step {state.step}"
            )
            return state
        if not state.history or state.history[-1]["step"] != state.step:
            self._validate_and_save()
        log.info(
            "stopped: %s (step %d, epoch %d, %.1f min)",
            self.stop_reason,
            state.step,
            state.epoch,
            state.elapsed_s / 60,
        )
        return state

    def _count_bad_step(self, out: dict[str, float]) -> bool:
        """Track non-finite steps; True if this step counts (its update was applied)."""
        if out["finite"]:
            self.bad_steps = 0
            return True
        self.bad_steps += 1
        log.warning(
            "step %d: non-finite loss or gradient (loss %s, grad norm %s); update skipped "
            "(%d in a row)", self.state.step + 1, out["loss"], out["grad_norm"], self.bad_steps,
        )  # fmt: skip
        if self.bad_steps >= self.cfg.max_bad_steps:
            raise MTError(
                f"{self.bad_steps} consecutive steps had a non-finite loss or gradient "
                f"(train.max_bad_steps={self.cfg.max_bad_steps}); the run stopped at step "
                f"{self.state.step}: lower train.lr, or use train.precision=fp32."
            )
        return False

    def _log_window(self, window: dict[str, float], seconds: float) -> None:
        tokens = max(window["tokens"], 1.0)
        scalars = {
            "train/loss": window["loss"] / tokens,
            "train/ppl": math.exp(min(window["nll"] / tokens, 50)),
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": window["grad_norm"] / max(window["steps"], 1),
            "train/tokens_per_s": window["tokens"] * self.dist.world / max(seconds, 1e-9),
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


@torch.no_grad()  # not inference_mode: see mt.search
def evaluate_split(
    model: nn.Module,
    data: ParallelData,
    tokenizer: Tokenizer,
    max_tokens: int,
    precision: str,
    device: torch.device,
    with_bleu: bool,
    prefix: str,
    label_smoothing: float = 0.0,
) -> dict[str, float]:
    """Loss per target token, perplexity and (if `with_bleu`) greedy BLEU of one split.

    Runs on the bare model (not a DDP wrapper), so one rank can evaluate alone.
    """
    model.eval()
    loss_fn = Seq2SeqLoss(model, label_smoothing, PAD_ID)
    loss_sum = nll_sum = tokens = 0.0
    hyps: dict[int, str] = {}
    for ids in eval_batches(data, max_tokens):
        batch = data.collate(ids).to(device)
        with autocast(precision, device):
            loss, nll = loss_fn(batch.src, batch.src_pad_mask, batch.tgt_in, batch.tgt_out)
            if with_bleu:
                found = greedy_search(
                    model,
                    batch.src,
                    batch.src_pad_mask,
                    bos_id=BOS_ID,
                    eos_id=EOS_ID,
                    max_len=data.max_len - 1,  # the model's positions, bos included
                )
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


def average_last(paths: RunPaths, n: int) -> Path | None:
    """Average the last `n` step checkpoints into averaged.pt; None if fewer than 2 exist."""
    steps = step_checkpoints(paths.checkpoints)[-n:]
    if len(steps) < 2:
        return None
    out = paths.checkpoints / "averaged.pt"
    save_checkpoint(average_checkpoints(steps), out)
    log.info("averaged %s into %s", ", ".join(p.name for p in steps), out)
    return out


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
