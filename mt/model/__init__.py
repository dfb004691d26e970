"""Encoder-decoder Transformer: builders, the `Seq2Seq` model and its incremental-decoding state."""

from mt.model.builders import (
    transformer,
    transformer_base,
    transformer_big,
    transformer_small,
    transformer_tiny,
)
from mt.model.cache import DecoderState, KVCache
from mt.model.transformer import Seq2Seq

__all__ = [
    "DecoderState",
    "KVCache",
    "Seq2Seq",
    "transformer",
    "transformer_base",
    "transformer_big",
    "transformer_small",
    "transformer_tiny",
]
