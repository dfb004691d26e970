"""The objects `mt train` trains with, built from its config: the model's arguments, the model
and what updates it (`Optimization`), and the `Trainer` over them and the data folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from mt.config import TrainConfig
from mt.data import ParallelData
from mt.errors import MTError
from mt.loss import Seq2SeqLoss
from mt.manifest import Manifest
from mt.model import transformer
from mt.optim import build_optimizer, build_scheduler
from mt.rundir import RunDir
from mt.runtime import Dist, grad_scaler, seed_everything
from mt.tokenizer import PAD_ID, AnyTokenizer, load_tokenizer
from mt.tracking import Tracker
from mt.training.finetune import Init
from mt.training.state import Stopwatch
from mt.training.trainer import Trainer


def resolve_model_args(cfg: TrainConfig, manifest: Manifest) -> dict[str, Any]:
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
class Optimization:
    """The model and what updates it."""

    model: torch.nn.Module
    loss_fn: torch.nn.Module  # the loss over the model, maybe wrapped in DDP / torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def compiled(loss_fn: torch.nn.Module) -> torch.nn.Module:
    """The loss (and the model inside it) under torch.compile, for train.compile=true.

    Shapes are dynamic from the first call: token batching gives nearly every batch its own
    (B, S, T), and static shapes would compile one graph per shape. `compile_counts` says how
    many graphs were compiled; `python scripts/bench_train.py --compile` times compiled
    against eager updates.
    """
    return torch.compile(loss_fn, dynamic=True)


def compile_counts() -> dict[str, int]:
    """Graphs torch.compile has compiled in this process, and how many were recompilations
    (a guard failed on a new batch)."""
    from torch._dynamo.utils import counters  # imports dynamo: only runs that compile pay for it

    return {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "recompiles": int(sum(counters["recompiles"].values())),
    }


def build_optimization(
    cfg: TrainConfig,
    model_args: dict[str, Any],
    device: torch.device,
    dist: Dist,
    clock: Stopwatch,
    init: dict[str, torch.Tensor] | None = None,
) -> Optimization:
    """The model (the same initial weights on every rank: random, or the state `init` of a
    fine-tune's init run), its loss (DDP-wrapped under torchrun, compiled with train.compile),
    the optimizer and the LR schedule on `clock`."""
    seed_everything(cfg.train.seed)  # the same initial weights on every rank
    try:
        model = transformer(**model_args)
    except ValueError as exc:
        raise MTError(str(exc)) from None
    if init is not None:
        model.load_state_dict(init)
    model = model.to(device)
    loss_fn: torch.nn.Module = Seq2SeqLoss(model, cfg.train.label_smoothing, PAD_ID)
    if dist.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        loss_fn = torch.nn.parallel.DistributedDataParallel(loss_fn, device_ids=ids)
    if cfg.train.compile:
        loss_fn = compiled(loss_fn)
    t = cfg.train
    optimizer = build_optimizer(model, t.lr, tuple(t.betas), t.eps, t.weight_decay, device)
    seconds = t.max_minutes * 60
    scheduler = build_scheduler(optimizer, t.warmup_steps, t.schedule, t.max_steps, seconds, clock)
    return Optimization(model, loss_fn, optimizer, scheduler)


def target_code_id(manifest: Manifest, tokenizer: AnyTokenizer) -> int | None:
    """The id of the language code every target of the data starts with (`Manifest.tgt_tag`,
    data of an NLLB / M2M100 run), which validation and test decoding force; None without."""
    return tokenizer.piece_id(manifest.tgt_tag) if manifest.tgt_tag else None


def build_trainer(
    cfg: TrainConfig,
    manifest: Manifest,
    data_dir: Path,
    run: RunDir,
    device: torch.device,
    precision: str,
    dist: Dist,
    init: Init | None = None,
) -> Trainer:
    """The Trainer of the run in `run` on the data folder `data_dir`, starting from `init`'s
    weights when given; every checkpoint it writes carries the model arguments, the resolved
    config and the vocabulary (and an imported init run's `pretrained` entry)."""
    model_args = resolve_model_args(cfg, manifest)
    clock = Stopwatch()  # training seconds, read by the linear schedule and the trainer
    opt = build_optimization(cfg, model_args, device, dist, clock, init.model if init else None)
    seed_everything(cfg.train.seed + dist.rank)  # own dropout per rank
    max_len = cfg.model.max_positions
    tokenizer = load_tokenizer(data_dir / manifest.spm.models["tgt"])
    first = target_code_id(manifest, tokenizer)
    valid = ParallelData(data_dir, "valid", max_len, first) if manifest.has_split("valid") else None
    return Trainer(
        model=opt.model,
        loss_fn=opt.loss_fn,
        optimizer=opt.optimizer,
        scheduler=opt.scheduler,
        scaler=grad_scaler(precision, device),
        train_data=ParallelData(data_dir, "train", max_len),
        valid_data=valid,
        tokenizer=tokenizer,
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
                # an NLLB / M2M100 run's language codes (the import's data says the same)
                **{k: v for k in ("src_tag", "tgt_tag") if (v := getattr(manifest, k))},
            },
            **({"pretrained": init.pretrained} if init and init.pretrained else {}),
        },
    )
