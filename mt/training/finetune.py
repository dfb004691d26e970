"""`mt train init_from=RUN_DIR`: a new run that starts from another run's weights (a run mt
trained, or one `mt import` wrote) at step 0 with a fresh optimizer and schedule.

`load_init` checks what a fine-tune needs (the run has a checkpoint, the data folder holds the
run's vocabulary, the composed model is the run's architecture) and returns its weights and
the `pretrained` entry an imported run's checkpoints carry; `carry_over` copies the imported
tokenizer (hf_tokenizer/) into the new run, so that it exports back to its Hugging Face class.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from mt.config import FINETUNE_FREE, ModelConfig, TrainConfig
from mt.convert.pretrained import TOKENIZER_DIR
from mt.errors import MTError
from mt.manifest import Manifest
from mt.rundir import RunDir
from mt.runvocab import read_run_vocab


@dataclass
class Init:
    """What a fine-tune takes from its init run."""

    run: RunDir
    checkpoint: Path
    model: dict[str, Tensor]
    """The init checkpoint's model state (loaded over the freshly built model)."""
    pretrained: dict[str, Any] | None
    """An imported run's source class, config and id maps (see `mt.convert.reexport`)."""


def check_architecture(model: ModelConfig, model_args: dict[str, Any], init_from: str) -> None:
    """Refuse a composed model config that builds another model than the init checkpoint's
    arguments: every key but FINETUNE_FREE must agree (a key an older checkpoint lacks counts
    at its default, as `mt.rundir.same_model` reads it)."""
    for field in dataclasses.fields(ModelConfig):
        if field.name in FINETUNE_FREE:
            continue
        mine, theirs = getattr(model, field.name), model_args.get(field.name, field.default)
        if mine != theirs:
            free = ", ".join(f"model.{k}" for k in FINETUNE_FREE)
            raise MTError(
                f"model.{field.name}={mine} differs from init_from={init_from}'s {theirs}: a "
                f"fine-tune keeps the init run's architecture (only {free} may change)."
            )


def load_init(cfg: TrainConfig, manifest: Manifest, data_dir: Path) -> Init:
    """The weights `cfg.init_from` gives a new run, after checking the run against it.

    Raises:
        MTError: An init run without a checkpoint (or not a run), a data folder of another
            vocabulary, or a model override that changes the architecture; one sentence each.
    """
    name = str(cfg.init_from)
    init = read_run_vocab(name, "init_from")
    if manifest.spm.identity() != init.identity:
        raise MTError(
            f"data_dir {data_dir} was prepared with another vocabulary than init_from={name} "
            f"(its vocab.json); prepare it with tokenizer.from_run={name}."
        )
    if init.codes and manifest.tgt_tag is None:
        raise MTError(
            f"init_from={name} starts every sentence with a language code and data_dir "
            f"{data_dir} has none; prepare it with tokenizer.from_run={name}."
        )
    check_architecture(cfg.model, init.ckpt["model_args"], name)
    return Init(init.run, init.checkpoint, init.ckpt["model"], init.ckpt.get("pretrained"))


def carry_over(init: Init, run: RunDir) -> None:
    """Copy the init run's Hugging Face tokenizer files (an imported run's) into `run`."""
    source = init.run.root / TOKENIZER_DIR
    if source.is_dir():
        shutil.copytree(source, run.root / TOKENIZER_DIR, dirs_exist_ok=True)
