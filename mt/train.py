"""run_train: data folder -> model, optimizer, loaders -> Trainer.fit -> checkpoints and scores.

Running it again on a run folder with checkpoints resumes from the newest readable one. SIGTERM
or Ctrl-C stops any phase within a batch or a step, with the state saved: a re-run goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from mt.checkpoint import link_checkpoint, load_checkpoint
from mt.config import (
    FALLBACK_SIZES,
    PrepareConfig,
    TrainConfig,
    fallback_model,
    validate_train,
)
from mt.data import ParallelData, epoch_batches
from mt.errors import MTError, Stopped
from mt.loss import Seq2SeqLoss
from mt.manifest import Manifest, load_manifest
from mt.optim import build_optimizer, build_scheduler
from mt.prepare import run_prepare
from mt.rundir import RunDir
from mt.runtime import (
    Dist,
    all_reduce_max,
    grad_scaler,
    init_distributed,
    seed_everything,
    setup_hardware,
)
from mt.tokenizer import PAD_ID, Tokenizer
from mt.tracking import Tracker, setup_logging
from mt.trainer import (
    EvaluationStopped,
    Stopwatch,
    Trainer,
    average_last,
    evaluate_split,
    write_json,
)

log = logging.getLogger("mt.train")


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run in `cfg.run_dir`; returns the final scores."""
    validate_train(cfg)
    dist = init_distributed(cfg.train.device)
    setup_logging(None, dist.is_main)
    data_dir = _data_dir(cfg, dist)
    manifest = load_manifest(data_dir)
    run = RunDir(Path(cfg.run_dir))
    with contextlib.ExitStack() as stack:
        if dist.is_main:  # rank 0 alone checks, locks and writes the run folder
            run.check_is_run()
            stack.enter_context(run.locked())
            _start_run_dir(run, cfg, manifest, data_dir)
        if dist.world > 1:
            torch.distributed.barrier()  # the folder is checked and cleaned before anyone reads it
        t = cfg.train
        device, precision = setup_hardware(t.device, t.precision, t.threads, dist.local_rank)
        if t.fallback_model:
            cfg = _fit_model_to_minutes(cfg, manifest, data_dir, run, device, precision, dist)
        trainer = _build_trainer(cfg, manifest, data_dir, run, device, precision, dist)
        stack.callback(trainer.tracker.close)
        _resume(trainer)
        stack.enter_context(_graceful_stop(trainer))
        state = trainer.fit()
        if trainer.stop_signal:
            saved = (
                "checkpoint saved before its validation finished. Run the same command again "
                "to validate it and resume."
                if trainer.validation_cut_short
                else "checkpoint saved. Run the same command again to resume."
            )
            raise _stopped(trainer.stop_signal, f"at step {state.step}; {saved}")
        results = _results(trainer)
        if dist.is_main:
            results.update(_final_scores(cfg, trainer, data_dir, manifest))
            write_json(run.results, results)
    return results


def _data_dir(cfg: TrainConfig, dist: Dist) -> Path:
    """The prepared data folder: `data_dir`, or `data` prepared (cached) into prepare_dir."""
    if cfg.data_dir is not None:
        return Path(cfg.data_dir)
    if dist.is_main:
        run_prepare(
            PrepareConfig(data=cfg.data, clean=cfg.clean, spm=cfg.spm, out_dir=cfg.prepare_dir)
        )
    if dist.world > 1:
        torch.distributed.barrier()
    return Path(cfg.prepare_dir)


def _start_run_dir(run: RunDir, cfg: TrainConfig, manifest: Manifest, data_dir: Path) -> None:
    """Clean what a killed run left, install the vocabulary, record the config, open the log."""
    run.sweep_temps()
    run.install_vocab(manifest.spm, data_dir)
    run.config.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    setup_logging(run.log, is_main=True)


def _fit_model_to_minutes(
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
        chosen = fallback if recorded == _model_args(fallback, manifest) else cfg
    else:
        chosen = _timed_choice(cfg, fallback, manifest, data_dir, device, precision, dist)
    if chosen is fallback and dist.is_main:  # _start_run_dir wrote the configured model
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
    opt = _build_optimization(cfg, _model_args(cfg, manifest), device, dist, Stopwatch())
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


def _recorded_model_args(run: RunDir) -> dict[str, Any] | None:
    """The model arguments of the run's newest readable checkpoint."""
    for path in [*reversed(run.steps()), run.last]:
        if path.is_file():
            with contextlib.suppress(MTError):
                return load_checkpoint(path).get("model_args")
    return None


def _model_args(cfg: TrainConfig, manifest: Manifest) -> dict[str, Any]:
    """The builder's arguments: the model config plus the data folder's vocabulary sizes."""
    if cfg.model.share_embeddings and not manifest.spm.joint:
        raise MTError(
            "model.share_embeddings=true needs a joint vocabulary (prepare with spm.joint=true), "
            "or set model.share_embeddings=false."
        )
    return {
        **dataclasses.asdict(cfg.model),
        "src_vocab_size": manifest.spm.vocab_size,
        "tgt_vocab_size": manifest.spm.tgt_vocab_size,
        "pad_id": PAD_ID,
    }


@dataclass
class _Optimization:
    """The model and what updates it."""

    model: torch.nn.Module
    loss_fn: torch.nn.Module  # the loss over the model, maybe wrapped in DDP / torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def _build_optimization(
    cfg: TrainConfig, model_args: dict[str, Any], device: torch.device, dist: Dist, clock: Stopwatch
) -> _Optimization:
    from mt.model import transformer

    seed_everything(cfg.train.seed)  # the same initial weights on every rank
    try:
        model = transformer(**model_args).to(device)
    except ValueError as exc:
        raise MTError(str(exc)) from None
    loss_fn: torch.nn.Module = Seq2SeqLoss(model, cfg.train.label_smoothing, PAD_ID)
    if dist.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        loss_fn = torch.nn.parallel.DistributedDataParallel(loss_fn, device_ids=ids)
    if cfg.train.compile:
        loss_fn = torch.compile(loss_fn)
    t = cfg.train
    optimizer = build_optimizer(model, t.lr, tuple(t.betas), t.eps, t.weight_decay, device)
    seconds = t.max_minutes * 60
    scheduler = build_scheduler(optimizer, t.warmup_steps, t.schedule, t.max_steps, seconds, clock)
    return _Optimization(model, loss_fn, optimizer, scheduler)


def _build_trainer(
    cfg: TrainConfig,
    manifest: Manifest,
    data_dir: Path,
    run: RunDir,
    device: torch.device,
    precision: str,
    dist: Dist,
) -> Trainer:
    model_args = _model_args(cfg, manifest)
    clock = Stopwatch()  # training seconds, read by the linear schedule and the trainer
    opt = _build_optimization(cfg, model_args, device, dist, clock)
    seed_everything(cfg.train.seed + dist.rank)  # own dropout per rank
    max_len = cfg.model.max_positions
    valid = ParallelData(data_dir, "valid", max_len) if manifest.has_split("valid") else None
    return Trainer(
        model=opt.model,
        loss_fn=opt.loss_fn,
        optimizer=opt.optimizer,
        scheduler=opt.scheduler,
        scaler=grad_scaler(precision, device),
        train_data=ParallelData(data_dir, "train", max_len),
        valid_data=valid,
        tokenizer=Tokenizer(data_dir / manifest.spm.models["tgt"]),
        tracker=Tracker(run.tensorboard if dist.is_main else None),
        run=run,
        cfg=cfg.train,
        device=device,
        precision=precision,
        dist=dist,
        clock=clock,
        extra_state={
            "model_args": model_args,
            "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
            "vocab": manifest.spm.identity(),
            # how the data was prepared, which a data_dir= run's own config does not say
            "data": {
                "direction": manifest.direction,
                "normalize": manifest.normalize,
                "tags": manifest.tags,
            },
        },
    )


def _resume(trainer: Trainer) -> None:
    """Load the run's newest checkpoint, if any, and say what is being trained."""
    ckpt = trainer.run.resume_state(trainer.extra_state["model_args"])
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
        log.info("resuming %s from step %d", trainer.run.root, trainer.state.step)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    log.info(
        "training %s: %.1fM parameters, %s, %s, %d train pairs, world size %d",
        trainer.run.root, n_params / 1e6, trainer.device, trainer.precision,
        len(trainer.train_data), trainer.dist.world,
    )  # fmt: skip


@contextlib.contextmanager
def _graceful_stop(trainer: Trainer) -> Iterator[None]:
    """SIGTERM / first Ctrl-C ask the trainer to checkpoint and stop (and the end-of-run
    scoring to stop between batches); a second Ctrl-C aborts."""

    def handler(signum: int, _frame: object) -> None:
        trainer.request_stop(signal.Signals(signum).name)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stopped(signal_name: str, what: str) -> Stopped:
    """The exception that ends a run stopped by `signal_name`: exit status 128 + its number
    (143 for SIGTERM, 130 for Ctrl-C), and `what` happened, saying how to go on."""
    return Stopped(f"stopped by {signal_name} {what}", 128 + signal.Signals[signal_name].value)


@contextlib.contextmanager
def _stoppable(trainer: Trainer, phase: str) -> Iterator[None]:
    """Run an end-of-run phase (rank 0 alone) that a stop request ends: one already made
    when it starts, or one that cut its evaluation short between two batches."""
    finish = "checkpoints are saved, run the same command again to finish."
    if trainer.requested_signal:
        raise _stopped(trainer.requested_signal, f"before {phase}; {finish}")
    try:
        yield
    except EvaluationStopped as exc:
        raise _stopped(exc.signal_name, f"during {phase}; {finish}") from None


def _results(trainer: Trainer) -> dict[str, Any]:
    state = trainer.state
    return {
        "step": state.step,
        "epoch": state.epoch,
        "minutes": state.elapsed_s / 60,
        "stop_reason": trainer.stop_reason,
        "history": state.history,
        "best_step": state.best_step,
    }


def _final_scores(
    cfg: TrainConfig, trainer: Trainer, data_dir: Path, manifest: Manifest
) -> dict[str, Any]:
    """Choose the final checkpoint on validation, link it as final.pt, score it on test.

    The candidates are best.pt (best validation score) and, with train.average_last=N,
    averaged.pt (the mean of the last N step checkpoints); the one scoring higher on
    validation wins. Test BLEU is greedy, as during validation. A stop request ends either
    phase with Stopped; every checkpoint is on disk by then, so a re-run redoes the phase.
    """
    run = trainer.run
    final = run.best if run.best.is_file() else run.last
    out: dict[str, Any] = {}
    if cfg.train.average_last > 1:
        with _stoppable(trainer, "checkpoint averaging"):
            final, out = _average(cfg, trainer, final)
    link_checkpoint(final, run.final)
    out["final_checkpoint"] = final.name
    if not manifest.has_split("test"):
        return out
    with _stoppable(trainer, "the final test decode"):
        return {**out, **_test_scores(cfg, trainer, data_dir, final)}


def _average(cfg: TrainConfig, trainer: Trainer, final: Path) -> tuple[Path, dict[str, Any]]:
    """Average the last train.average_last step checkpoints; returns the final checkpoint
    and averaged.pt's validation scores: averaged.pt if it validates at least as well as
    `final` (best.pt) or there is no validation split, else `final`, which it also is when
    fewer than two step checkpoints exist."""
    run, out = trainer.run, {}
    averaged = average_last(run, cfg.train.average_last)
    if averaged is not None and trainer.valid_data is not None:
        trainer.model.load_state_dict(load_checkpoint(averaged)["model"])
        metrics = trainer.validate(all_ranks=False)
        out["averaged_valid"] = metrics
        score = metrics.get("valid/bleu", -metrics["valid/loss"])
        best = trainer.state.best_score
        shown = "none" if best is None else f"{best:.3f}"
        log.info("averaged.pt on validation: %.3f (best.pt: %s at step %d)",
                 score, shown, trainer.state.best_step)  # fmt: skip
        if best is None or score >= best:
            final = averaged
    elif averaged is not None:
        final = averaged
    return final, out


def _test_scores(
    cfg: TrainConfig, trainer: Trainer, data_dir: Path, final: Path
) -> dict[str, float]:
    """Greedy BLEU and loss of `final` on the test split (rank 0 alone)."""
    trainer.model.load_state_dict(load_checkpoint(final)["model"])
    test = ParallelData(data_dir, "test", cfg.model.max_positions)
    log.info("decoding the test split (%d pairs) with %s", len(test), final.name)
    metrics = evaluate_split(
        trainer.model, test, trainer.tokenizer, trainer.precision, trainer.device,
        with_bleu=True, prefix="test", label_smoothing=cfg.train.label_smoothing,
        stop=lambda: trainer.requested_signal,
    )  # fmt: skip
    log.info("test (%s, greedy): BLEU %.2f, loss %.3f", final.name, metrics["test/bleu"],
             metrics["test/loss"])  # fmt: skip
    return metrics
