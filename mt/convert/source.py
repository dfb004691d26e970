"""What every exporter starts from: the run being exported (`Source`) and what each format holds.

Exporters read the model's own modules (not checkpoint key strings), so a layer that changes
without its exporter fails the equality tests in tests/test_export.py. `check_representable`
refuses, by option name, a model that a format cannot hold exactly.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mt.checkpoint import load_checkpoint
from mt.config import ModelConfig
from mt.corpus import file_sha256
from mt.decode.run import load_run
from mt.errors import MTError
from mt.model.transformer import Seq2Seq
from mt.rundir import RunDir
from mt.tokenizer import AnyTokenizer

# The name each format's refusals give it.
TARGETS = {"ctranslate2": "CTranslate2", "huggingface": "Hugging Face transformers"}
# What each exporter can hold: format -> model key -> the values it represents exactly.
# CTranslate2 has rotary (half-split) and Shaw relative self-attention; Marian and Pegasus
# (and M2M100) add absolute positions to the embeddings only.
_HELD_BY_BOTH: dict[str, tuple[Any, ...]] = {
    "activation": ("relu", "gelu", "swish"),
    "norm": ("pre", "post"),
}
_REPRESENTABLE: dict[str, dict[str, tuple[Any, ...]]] = {  # positions first (check_representable)
    "ctranslate2": {"positions": ("sinusoidal", "learned", "rope", "relative"), **_HELD_BY_BOTH},
    "huggingface": {"positions": ("sinusoidal", "learned"), **_HELD_BY_BOTH},
}
# Keys that change no computation at inference, or that every exporter copies as they are
# (max_relative_positions is nonzero with positions=relative only, which the formats check).
_STRUCTURAL = {
    "src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "n_layers_enc", "n_layers_dec",
    "d_ff", "dropout", "attn_dropout", "act_dropout", "max_positions", "share_embeddings",
    "pad_id", "max_relative_positions", *(k for held in _REPRESENTABLE.values() for k in held),
}  # fmt: skip
# Keys only CTranslate2 holds for any value: it takes the position table as written (any
# sinusoid, from any offset), an unscaled embedding and an output bias. An imported run goes
# back to Hugging Face in its own class instead (`mt.convert.reexport`).
_CT2_STRUCTURAL = {"scale_embeddings", "sinusoid", "position_offset", "output_bias"}


def missing_extra(package: str, what: str = "this") -> MTError:
    """The one sentence for a missing package of the export extra."""
    return MTError(
        f"{what} needs the {package} package: pip install 'mt[export]' "
        '(from a checkout: pip install -e ".[export]").'
    )


@dataclass
class Source:
    """The run being exported: its model in fp32 on CPU, tokenizers and provenance."""

    run: RunDir
    checkpoint: Path
    model: Seq2Seq
    model_args: dict[str, Any]
    src_tok: AnyTokenizer
    tgt_tok: AnyTokenizer
    normalize: str
    direction: str = "?"  # e.g. en-de, as the data was prepared
    pretrained: dict[str, Any] | None = None
    """An imported run's source class, config and id maps (`mt import`), else None."""
    tgt_first: int | None = None
    """The mt id every output starts with (a fine-tuned NLLB run's target code), else None."""

    @functools.cached_property
    def checkpoint_sha256(self) -> str:
        """Hex sha256 of the checkpoint file, read once."""
        return file_sha256(self.checkpoint)

    def results(self) -> dict[str, Any]:
        """results.json of the run (scores, steps), or {} when it has none."""
        if not self.run.results.is_file():
            return {}
        return json.loads(self.run.results.read_text(encoding="utf-8"))


def load_source(run_dir: str | Path, checkpoint: str | None) -> Source:
    """Load the run's checkpoint (as `mt translate` picks it) for export."""
    loaded = load_run(Path(run_dir), checkpoint, torch.device("cpu"))
    ckpt = load_checkpoint(loaded.checkpoint)
    return Source(
        RunDir(Path(run_dir)), loaded.checkpoint, loaded.model.float(), ckpt["model_args"],
        loaded.src_tok, loaded.tgt_tok, loaded.normalize_form,
        str(ckpt.get("data", {}).get("direction", "?")), ckpt.get("pretrained"),
        loaded.tgt_tag,
    )  # fmt: skip


def check_representable(model_args: dict[str, Any], fmt: str) -> None:
    """Refuse, naming the option, a model that format `fmt` (a key of TARGETS) cannot hold
    exactly."""
    target, held = TARGETS[fmt], _REPRESENTABLE[fmt]
    defaults = {f.name: f.default for f in fields(ModelConfig)}
    for key, allowed in held.items():  # first: positions=relative names positions, not its k
        value = model_args.get(key, defaults.get(key))
        if value not in allowed:
            raise MTError(
                f"model.{key}={value} cannot be exported to {target}; it holds "
                f"model.{key}={' | '.join(map(str, allowed))}."
            )
    structural = _STRUCTURAL | (_CT2_STRUCTURAL if fmt == "ctranslate2" else set())
    for key, value in model_args.items():
        if key not in structural and value and value != defaults.get(key):
            raise MTError(f"model.{key}={value} cannot be exported to {target} yet.")


def positions_table(model: Seq2Seq, side: str) -> Tensor:
    """The position table [P, D] a stack (`side`: encoder or decoder) adds to its embeddings
    (sinusoidal or learned), from position 0: a sinusoidal table's offset rows are left out."""
    positions = getattr(model, side).embed.positions
    if hasattr(positions, "table"):
        return positions.table[positions.offset :]
    return positions.weight


def pieces(tok: AnyTokenizer) -> list[str]:
    """The tokenizer's pieces, by id."""
    return tok.pieces()
