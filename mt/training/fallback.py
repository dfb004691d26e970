"""Choices made by timing a few updates on this machine before training:

- train.fallback_model: train the narrower preset instead when too few updates of the
  configured model would fit in train.max_minutes. A run with checkpoints keeps the model they
  were trained with.
- train.precision=auto on a CPU with native bf16 matmuls: bf16 or fp32, whichever updates
  faster for this model here (a narrow model can update faster in fp32, whose kernels skip
  the casts). On CUDA, auto is bf16 where supported, without a probe.

The log says what was chosen and why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from mt.checkpoint import load_checkpoint
from mt.config import FALLBACK_SIZES, TrainConfig, fallback_model
from mt.data import ParallelData, epoch_batches
from mt.errors import MTError
from mt.manifest import Manifest
from mt.rundir import RunDir, same_model
from mt.runtime import Dist, all_reduce_max, grad_scaler
from mt.tracking import Tracker
from mt.training.setup import build_optimization, resolve_model_args
from mt.training.state import Stopwatch
from mt.training.trainer import Trainer

log = logging.getLogger("mt.train")


def fit_model_to_minutes(
    cfg: TrainConfig,
    manifest: Manifest,
    data_dir: Path,
    run: RunDir,
    device: torch.device,
    precision: str,
    dist: Dist,
) -> TrainConfig:
    """cfg, or cfg training train.fallback_model's sizes if the model is too slow here.

    A run with checkpoints keeps the model they were trained with; a new run times a few
    updates of the configured model on its own batches (the slowest rank counts).
    """
    t = cfg.train
    fallback = dataclasses.replace(cfg, model=fallback_model(cfg.model, t.fallback_model))
    if run.trained:
        recorded = _recorded_model_args(run)
        chosen = fallback if same_model(recorded, resolve_model_args(fallback, manifest)) else cfg
    else:
        chosen = _timed_choice(cfg, fallback, manifest, data_dir, device, precision, dist)
    if chosen is fallback and dist.is_main:  # run_train wrote the configured model first
        run.config.write_text(OmegaConf.to_yaml(OmegaConf.structured(fallback)))
    return chosen


def _timed_choice(
    cfg: TrainConfig,
    fallback: TrainConfig,
    manifest: Manifest,
    data_dir: Path,
    device: torch.device,
    precision: str,
    dist: Dist,
) -> TrainConfig:
    """cfg if its timed pace makes train.fallback_below_steps updates in the minutes, else
    fallback; the log says which and why."""
    t = cfg.train
    seconds = _seconds_per_update(cfg, manifest, data_dir, device, precision, dist)
    seconds = all_reduce_max([seconds], device)[0]
    steps = t.max_minutes * 60 / seconds
    if steps >= t.fallback_below_steps:
        log.info(
            "speed check: %.2f s per update here, about %d updates in train.max_minutes=%g "
            "(train.fallback_below_steps=%d): keeping the configured model",
            seconds, steps, t.max_minutes, t.fallback_below_steps,
        )  # fmt: skip
        return cfg
    sizes = ", ".join(f"{key} {getattr(fallback.model, key)}" for key in FALLBACK_SIZES)
    log.info(
        "speed check: %.2f s per update here, about %d updates in train.max_minutes=%g, fewer "
        "than train.fallback_below_steps=%d: training train.fallback_model=%s instead (%s)",
        seconds, steps, t.max_minutes, t.fallback_below_steps, t.fallback_model, sizes,
    )  # fmt: skip
    return fallback


def _seconds_per_update(
    cfg: TrainConfig,
    manifest: Manifest,
    data_dir: Path,
    device: torch.device,
    precision: str,
    dist: Dist,
    budget_s: float = 10.0,
) -> float:
    """Mean wall time of one update of a throwaway copy of the configured model, after two
    warm-up updates, over at most `budget_s` seconds of updates on the run's first batches."""
    t = cfg.train
    opt = build_optimization(cfg, resolve_model_args(cfg, manifest), device, dist, Stopwatch())
    data = ParallelData(data_dir, "train", cfg.model.max_positions)
    trainer = Trainer(
        model=opt.model, loss_fn=opt.loss_fn, optimizer=opt.optimizer, scheduler=opt.scheduler,
        scaler=grad_scaler(precision, device), train_data=data, valid_data=None, tokenizer=None,
        tracker=Tracker(None), run=None, cfg=t, device=device, precision=precision, dist=dist,
    )  # fmt: skip
    batches = epoch_batches(data, t.max_tokens, t.seed, 0, dist.rank, dist.world)
    groups = [batches[i : i + t.update_freq] for i in range(0, len(batches), t.update_freq)]
    groups = [[data.collate(ids) for ids in group] for group in groups[:32]]
    warmup = min(2, len(groups) - 1)
    for group in groups[:warmup]:
        trainer.train_step(group)
    timed, start = 0, time.perf_counter()
    for group in groups[warmup:]:
        trainer.train_step(group)  # its float results wait for the device
        timed += 1
        if time.perf_counter() - start > budget_s:
            break
    return (time.perf_counter() - start) / timed


def faster_precision(
    cfg: TrainConfig, manifest: Manifest, data_dir: Path, device: torch.device, dist: Dist
) -> str:
    """bf16 or fp32, whichever takes less time per update of the configured model on the
    run's first batches (the slowest rank counts); for train.precision=auto on a CPU that has
    both, once per run (checkpoints record the choice, which a resume keeps).
    `python scripts/bench_train.py --presets mini,small` compares them at length."""
    timed = {}
    for precision in ("bf16", "fp32"):
        seconds = _seconds_per_update(cfg, manifest, data_dir, device, precision, dist, 4.0)
        timed[precision] = all_reduce_max([seconds], device)[0]
    chosen = min(timed, key=timed.get)
    log.info(
        "precision=auto: %.3f s per update in bf16, %.3f s in fp32 here: training in %s",
        timed["bf16"], timed["fp32"], chosen,
    )  # fmt: skip
    return chosen


def _recorded_model_args(run: RunDir) -> dict[str, Any] | None:
    """The model arguments of the run's newest readable checkpoint."""
    for path in [*reversed(run.steps()), run.last]:
        if path.is_file():
            with contextlib.suppress(MTError):
                return load_checkpoint(path).get("model_args")
    return None
