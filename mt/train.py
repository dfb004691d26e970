"""run_train: data folder -> model, optimizer, loaders -> Trainer.fit -> checkpoints and scores.

Running it again on a run folder with checkpoints resumes from the newest readable one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
from omegaconf import OmegaConf

from mt.checkpoint import link_checkpoint, load_checkpoint, remove_stale_temps, step_checkpoints
from mt.config import PrepareConfig, TrainConfig, validate_train
from mt.data import ParallelData
from mt.errors import MTError, Stopped
from mt.loss import Seq2SeqLoss
from mt.optim import build_optimizer, build_scheduler
from mt.prepare import read_manifest, run_prepare
from mt.runtime import (
    Dist,
    grad_scaler,
    init_distributed,
    pick_device,
    pick_precision,
    seed_everything,
)
from mt.tokenizer import PAD_ID, Tokenizer
from mt.tracking import Tracker, setup_logging
from mt.trainer import RunPaths, Trainer, average_last, evaluate_split, write_json

log = logging.getLogger("mt.train")


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


def _check_run_dir(paths: RunPaths) -> None:
    root = paths.root
    if root.exists() and not root.is_dir():
        raise MTError(f"run_dir {root} exists and is not a folder.")
    ours = (root / "config.yaml").is_file() or paths.checkpoints.is_dir()
    if root.is_dir() and any(root.iterdir()) and not ours:
        raise MTError(f"run_dir {root} holds files that are not an mt run; choose another run_dir.")


def _model_args(cfg: TrainConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    spm = manifest["spm"]
    if cfg.model.share_embeddings and not spm["joint"]:
        raise MTError(
            "model.share_embeddings=true needs a joint vocabulary (prepare with spm.joint=true), "
            "or set model.share_embeddings=false."
        )
    return {
        **dataclasses.asdict(cfg.model),
        "src_vocab_size": spm["vocab_size"],
        "tgt_vocab_size": spm["tgt_vocab_size"],
        "pad_id": PAD_ID,
    }


def _copy_vocab(data_dir: Path, manifest: dict[str, Any], root: Path) -> dict[str, Path]:
    """Copy the SentencePiece model(s) into the run folder, so it translates on its own."""
    models = {}
    for side, name in manifest["spm"]["models"].items():
        shutil.copyfile(data_dir / name, root / name)
        models[side] = root / name
    return models


def _check_vocab(paths: RunPaths, manifest: dict[str, Any]) -> None:
    """Refuse to resume a run on another vocabulary, before its SentencePiece files are replaced.

    Vocabulary sizes alone can agree by chance (8,000 pieces of another corpus); the hashes of
    the SentencePiece models cannot. A run with no checkpoint yet may switch data freely.
    """
    ours = paths.root / "vocab.json"
    wanted = {"models": manifest["spm"]["models"], "sha256": manifest["spm"]["sha256"]}
    trained = paths.last.is_file() or bool(step_checkpoints(paths.checkpoints))
    if trained and ours.is_file() and json.loads(ours.read_text(encoding="utf-8")) != wanted:
        raise MTError(
            f"run_dir {paths.root} was trained on another vocabulary (its vocab.json differs from "
            "the data_dir's SentencePiece model); use another run_dir, or the run's own data."
        )
    ours.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")


def _resume_state(paths: RunPaths, model_args: dict[str, Any]) -> dict[str, Any] | None:
    """The newest readable checkpoint of the run (step files by step, then last.pt), or None.

    A kill between writing step_N.pt and pointing last.pt at it leaves last.pt one step
    behind, so the step files come first.
    """
    candidates = [*reversed(step_checkpoints(paths.checkpoints)), paths.last]
    skipped = False
    for path in candidates:
        if not path.is_file():
            continue
        try:
            ckpt = load_checkpoint(path)
        except MTError as exc:
            log.warning("skipping %s: %s", path, exc)
            skipped = True
            continue
        if ckpt.get("model_args") != model_args:
            raise MTError(
                f"{path} was trained with other model settings or another vocabulary than "
                "this config; use another run_dir, or the run's own config."
            )
        if "optimizer" not in ckpt:
            continue
        if skipped:
            log.warning("resuming from %s, the newest readable checkpoint", path)
        return ckpt
    return None


def _build(
    cfg: TrainConfig,
    manifest: dict[str, Any],
    device: torch.device,
    dist: Dist,
    clock: Callable[[], float],
):
    from mt.model import transformer

    model_args = _model_args(cfg, manifest)
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
    return model, loss_fn, optimizer, scheduler, model_args


def _lock_run_dir(root: Path) -> IO[str]:
    """Hold an exclusive OS lock on RUN_DIR/.lock for the life of this process.

    The kernel drops the lock when the process dies, even by kill -9, so a stale lock file
    never blocks the next run.
    """
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / ".lock", "a+", encoding="utf-8")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise MTError(
            f"run_dir {root} is in use by another mt train process (pid {owner}); wait for it "
            "to finish or choose another run_dir."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@contextlib.contextmanager
def _graceful_stop(trainer: Trainer) -> Iterator[None]:
    """SIGTERM / first Ctrl-C ask the trainer to checkpoint and stop; a second Ctrl-C aborts."""

    def handler(signum: int, _frame: object) -> None:
        trainer.stop_signal = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run in `cfg.run_dir`; returns the final scores."""
    validate_train(cfg)
    dist = init_distributed(cfg.train.device)
    setup_logging(None, dist.is_main)
    data_dir = _data_dir(cfg, dist)
    manifest = read_manifest(data_dir)
    if manifest is None:
        raise MTError(f"data_dir {data_dir} has no manifest.json; run `mt prepare` first.")
    paths = RunPaths(Path(cfg.run_dir))
    lock = None  # rank 0 alone checks, locks and writes the run folder
    if dist.is_main:
        _check_run_dir(paths)
        lock = _lock_run_dir(paths.root)  # noqa: F841 (held until exit)
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temps(paths.checkpoints):
            log.info("removed %s, left by a run that was killed while writing it", stale.name)
        _check_vocab(paths, manifest)
        (paths.root / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        setup_logging(paths.root / "train.log", is_main=True)
    if dist.world > 1:
        torch.distributed.barrier()  # the folder is checked and cleaned before anyone reads it
    models = _copy_vocab(data_dir, manifest, paths.root) if dist.is_main else {}
    tokenizer = Tokenizer(models.get("tgt") or data_dir / manifest["spm"]["models"]["tgt"])

    seed_everything(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        device = pick_device(cfg.train.device, dist.local_rank)
        precision = pick_precision(cfg.train.precision, device)
    except (RuntimeError, ValueError) as exc:
        raise MTError(str(exc)) from None

    trainer: Trainer | None = None

    def clock() -> float:
        """Training seconds so far (all ranks agree on it), for the linear schedule's budget."""
        return 0.0 if trainer is None else trainer.state.elapsed_s

    model, loss_fn, optimizer, scheduler, model_args = _build(cfg, manifest, device, dist, clock)
    seed_everything(cfg.train.seed + dist.rank)  # same init everywhere, own dropout per rank
    max_len = cfg.model.max_positions
    valid = ParallelData(data_dir, "valid", max_len) if "valid" in manifest["splits"] else None
    trainer = Trainer(
        model,
        loss_fn,
        optimizer,
        scheduler,
        grad_scaler(precision, device),
        ParallelData(data_dir, "train", max_len),
        valid,
        tokenizer,
        Tracker(paths.root / "tensorboard" if dist.is_main else None),
        paths,
        cfg.train,
        device,
        precision,
        dist,
        extra_state={
            "model_args": model_args,
            "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
            "vocab": {"models": manifest["spm"]["models"], "sha256": manifest["spm"]["sha256"]},
        },
    )
    ckpt = _resume_state(paths, model_args)
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
        log.info("resuming %s from step %d", paths.root, trainer.state.step)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "training %s: %.1fM parameters, %s, %s, %d train pairs, world size %d",
        paths.root,
        n_params / 1e6,
        device,
        precision,
        len(trainer.train_data),
        dist.world,
    )
    with _graceful_stop(trainer):
        state = trainer.fit()
    if trainer.stop_signal:
        trainer.tracker.close()
        code = 128 + signal.Signals[trainer.stop_signal].value
        raise Stopped(
            f"stopped by {trainer.stop_signal} at step {state.step}; checkpoint saved. "
            "Run the same command again to resume.",
            code,
        )
    results = {
        "step": state.step,
        "epoch": state.epoch,
        "minutes": state.elapsed_s / 60,
        "stop_reason": trainer.stop_reason,
        "history": state.history,
        "best_step": state.best_step,
    }
    if dist.is_main:
        results.update(_final_scores(cfg, trainer, data_dir, manifest))
        write_json(paths.root / "results.json", results)
    trainer.tracker.close()
    return results


def _final_scores(
    cfg: TrainConfig, trainer: Trainer, data_dir: Path, manifest: dict[str, Any]
) -> dict[str, Any]:
    """Choose the final checkpoint on validation, link it as final.pt, score it on test.

    The candidates are best.pt (best validation score) and, with train.average_last=N,
    averaged.pt (the mean of the last N step checkpoints); the one scoring higher on
    validation wins. Test BLEU is greedy, as during validation.
    """
    paths = trainer.paths
    final = paths.best if paths.best.is_file() else paths.last
    out: dict[str, Any] = {}
    averaged = average_last(paths, cfg.train.average_last) if cfg.train.average_last > 1 else None
    if averaged is not None and trainer.valid_data is not None:
        trainer.model.load_state_dict(load_checkpoint(averaged)["model"])
        metrics = trainer.validate()
        out["averaged_valid"] = metrics
        score = metrics.get("valid/bleu", -metrics["valid/loss"])
        log.info(
            "averaged.pt on validation: %s (best.pt: %s at step %d)",
            f"{score:.3f}",
            f"{trainer.state.best_score:.3f}",
            trainer.state.best_step,
        )
        if trainer.state.best_score is None or score >= trainer.state.best_score:
            final = averaged
    elif averaged is not None:
        final = averaged
    link_checkpoint(final, paths.checkpoints / "final.pt")
    out["final_checkpoint"] = final.name
    if "test" not in manifest["splits"]:
        return out
    trainer.model.load_state_dict(load_checkpoint(final)["model"])
    test = ParallelData(data_dir, "test", cfg.model.max_positions)
    metrics = evaluate_split(
        trainer.model, test, trainer.tokenizer, cfg.train.max_tokens, trainer.precision,
        trainer.device, with_bleu=True, prefix="test", label_smoothing=cfg.train.label_smoothing,
    )  # fmt: skip
    log.info("test (%s, greedy): BLEU %.2f, loss %.3f", final.name, metrics["test/bleu"],
             metrics["test/loss"])  # fmt: skip
    return {**out, **metrics}
