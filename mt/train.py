"""run_train: data folder -> model, optimizer, loaders -> Trainer.fit -> checkpoints and scores.

Running it again on a run folder with checkpoints resumes from the newest readable one. SIGTERM
or Ctrl-C stops any phase within a batch or a step, with the state saved: a re-run goes on.
The objects come from `mt.training.setup` (and `mt.training.fallback`), the end-of-run scores from
`mt.training.final`, the signal handlers from `mt.training.stopping`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from mt.config import PrepareConfig, TokenizerConfig, TrainConfig, validate_train
from mt.errors import MTError
from mt.files import write_text
from mt.manifest import Manifest, load_manifest
from mt.prepare import run_prepare
from mt.rundir import RunDir
from mt.runtime import (
    Dist,
    Heartbeat,
    collective_failed,
    hold_to_timeout,
    init_distributed,
    job_failure,
    setup_hardware,
)
from mt.tracking import setup_logging
from mt.training.fallback import faster_precision, fit_model_to_minutes
from mt.training.final import final_scores
from mt.training.finetune import Init, carry_over, load_init
from mt.training.setup import build_trainer, compile_counts
from mt.training.state import TrainState
from mt.training.stopping import graceful_stop, stopped
from mt.training.trainer import Trainer

log = logging.getLogger("mt.train")


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run in `cfg.run_dir`; returns the final scores."""
    validate_train(cfg)
    dist = init_distributed(cfg.train.device)
    setup_logging(None, dist.is_main)
    data_dir = _data_dir(cfg, dist)
    manifest = load_manifest(data_dir)
    run = RunDir(Path(cfg.run_dir))
    # a fine-tune's first start takes the init run's weights; a resumed one, its own checkpoint
    init = load_init(cfg, manifest, data_dir) if cfg.init_from and not run.trained else None
    with contextlib.ExitStack() as stack:
        if dist.is_main:  # rank 0 alone checks, locks and writes the run folder
            run.check_is_run()
            stack.enter_context(run.locked())
            _start_run_dir(run, cfg, manifest, data_dir, init)
        if dist.world > 1:
            torch.distributed.barrier()  # the folder is checked and cleaned before anyone reads it
        t = cfg.train
        device, precision = setup_hardware(t.device, t.precision, t.threads, dist.local_rank)
        if t.fallback_model:
            cfg = fit_model_to_minutes(cfg, manifest, data_dir, run, device, precision, dist)
        trainer = build_trainer(cfg, manifest, data_dir, run, device, precision, dist, init)
        ckpt = run.resume_state(trainer.extra_state["model_args"])
        if t.precision == "auto" and device.type == "cpu" and precision == "bf16":
            # a resumed run keeps the precision it chose; a new one times both once the data
            # and the model are known to load (before the resume restores the RNGs the timing
            # uses). bf16 and fp32 share the (disabled) loss scaler: only autocast changes.
            recorded = ckpt.get("precision") if ckpt else None
            trainer.precision = recorded or faster_precision(cfg, manifest, data_dir, device, dist)
        stack.callback(trainer.tracker.close)
        _resume(trainer, ckpt)
        stack.enter_context(graceful_stop(trainer.request_stop))
        state = _fit(trainer, t.dist_timeout)
        if trainer.stop_signal:
            saved = (
                "checkpoint saved before its validation finished. Run the same command again "
                "to validate it and resume."
                if trainer.validation_cut_short
                else "checkpoint saved. Run the same command again to resume."
            )
            raise stopped(trainer.stop_signal, f"at step {state.step}; {saved}")
        results = _results(trainer)
        if dist.is_main:
            results.update(final_scores(cfg, trainer, data_dir, manifest))
            write_text(run.results, json.dumps(results, indent=2) + "\n")
    return results


def _fit(trainer: Trainer, dist_timeout: float) -> TrainState:
    """`trainer.fit()`; under torchrun, a collective that fails (a rank died, was stopped or
    is stuck for dist_timeout seconds) ends this rank with one sentence naming that rank."""
    world = trainer.dist.world
    hold_to_timeout(dist_timeout)
    with Heartbeat(trainer.dist.rank, world) as beat:
        trainer.heartbeat = beat
        try:
            state = trainer.fit()
        except RuntimeError as exc:
            if world == 1 or not collective_failed(exc):
                raise
            raise MTError(job_failure(beat, dist_timeout, exc)) from None
    if trainer.cfg.compile:
        log.info("train.compile: %(graphs)d graphs compiled, %(recompiles)d recompilations",
                 compile_counts())  # fmt: skip
    return state


def _data_dir(cfg: TrainConfig, dist: Dist) -> Path:
    """The prepared data folder: `data_dir`, or `data` prepared (cached) into prepare_dir."""
    if cfg.data_dir is not None:
        return Path(cfg.data_dir)
    if dist.is_main:  # a fine-tune's data is encoded with its init run's tokenizer
        tokenizer = TokenizerConfig(from_run=cfg.init_from)
        run_prepare(PrepareConfig(cfg.data, cfg.clean, cfg.spm, tokenizer, out_dir=cfg.prepare_dir))
    if dist.world > 1:
        torch.distributed.barrier()
    return Path(cfg.prepare_dir)


def _start_run_dir(
    run: RunDir, cfg: TrainConfig, manifest: Manifest, data_dir: Path, init: Init | None
) -> None:
    """Clean what a killed run left, install the vocabulary (and what a fine-tune carries over
    from its init run), record the config, open the log."""
    run.sweep_temps()
    run.install_vocab(manifest.spm, data_dir)
    if init is not None:
        carry_over(init, run)
    run.config.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    setup_logging(run.log, is_main=True)
    if init is not None:
        log.info("starting from %s (init_from): step 0, a fresh optimizer", init.checkpoint)


def _resume(trainer: Trainer, ckpt: dict[str, Any] | None) -> None:
    """Load the run's newest checkpoint `ckpt` (`RunDir.resume_state`), if any, and say what is
    being trained."""
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
        if "pretrained" in ckpt:  # a fine-tune of an import keeps its way back to the source
            trainer.extra_state["pretrained"] = ckpt["pretrained"]
        log.info("resuming %s from step %d", trainer.run.root, trainer.state.step)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    log.info(
        "training %s: %.1fM parameters, %s, %s, %d train pairs, world size %d",
        trainer.run.root, n_params / 1e6, trainer.device, trainer.precision,
        len(trainer.train_data), trainer.dist.world,
    )  # fmt: skip


def _results(trainer: Trainer) -> dict[str, Any]:
    """What results.json says of the training itself: where and why it stopped, its history."""
    state = trainer.state
    return {
        "step": state.step,
        "epoch": state.epoch,
        "minutes": state.elapsed_s / 60,
        "stop_reason": trainer.stop_reason,
        "history": state.history,
        "best_step": state.best_step,
    }
