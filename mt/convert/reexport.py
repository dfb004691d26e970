"""An imported run back to the Hugging Face class it came from (`mt export format=huggingface`).

The checkpoint's `pretrained` entry (written by `mt import`, kept by fine-tuning) holds the
family, the source's config and generation config, and the id maps; the run folder holds the
source's own tokenizer files (TOKENIZER_DIR). The weights go back through the id maps' inverse,
so an untouched import gives tensors equal to the source's and a tokenizer that encodes alike.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mt.convert.m2m100 import m2m100_weights
from mt.convert.marian import marian_weights
from mt.convert.pretrained import MARIAN, TOKENIZER_DIR, IdMap
from mt.errors import MTError
from mt.model.transformer import Seq2Seq

# Keys Hugging Face computes itself and never loads (Marian's sinusoid tables).
_COMPUTED = ("embed_positions",)


def pretrained_model(
    model: Seq2Seq, pretrained: dict[str, Any], tgt_first: int | None = None
) -> Any:
    """The transformers model of `pretrained["family"]` holding `model`'s weights (eval mode);
    with `tgt_first` (the mt id of a fine-tuned NLLB run's target code), its generation config
    forces that code first, so `generate` translates into the language the run was tuned for.

    Raises:
        MTError: Without transformers, or when the weights do not fill the class exactly.
    """
    try:  # optional extra: mt[export]
        import transformers
    except ImportError:
        raise MTError(
            "an export to Hugging Face needs the transformers package: pip install 'mt[export]'."
        ) from None
    family = pretrained["family"]
    cls = getattr(transformers, family)
    hf = cls(cls.config_class.from_dict(pretrained["config"]))
    src_map = IdMap.from_json(pretrained["src_map"])
    tgt_map = IdMap.from_json(pretrained["tgt_map"])
    banned = {int(k): float(v) for k, v in pretrained.get("banned", {}).items()}
    if family == MARIAN:
        shared = bool(pretrained["config"].get("share_encoder_decoder_embeddings", True))
        weights = marian_weights(model, src_map, tgt_map, shared, banned)
    else:
        weights = m2m100_weights(model, tgt_map, banned)
    result = hf.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if not any(c in k for c in _COMPUTED)]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"export to {family}: missing {missing}, unexpected {list(result.unexpected_keys)}"
        )
    hf.generation_config = transformers.GenerationConfig.from_dict(pretrained["generation_config"])
    if tgt_first is not None:
        hf.generation_config.forced_bos_token_id = tgt_map.rows[tgt_first]
    return hf.eval()


def write_pretrained(
    model: Seq2Seq,
    pretrained: dict[str, Any],
    run_root: Path,
    out_dir: Path,
    tgt_first: int | None = None,
) -> None:
    """Save the model in its source class (`pretrained_model`) and the source's tokenizer files
    into `out_dir`."""
    tokenizer = run_root / TOKENIZER_DIR
    if not tokenizer.is_dir():
        raise MTError(f"{tokenizer} is missing: the run folder needs its imported tokenizer.")
    pretrained_model(model, pretrained, tgt_first).save_pretrained(str(out_dir))
    for path in tokenizer.iterdir():
        shutil.copyfile(path, out_dir / path.name)
