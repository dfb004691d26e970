"""Encoder-decoder Transformer: the builder, `Seq2Seq` and its incremental-decoding state."""

from mt.model.builders import transformer
from mt.model.cache import DecoderState, KVCache
from mt.model.transformer import Seq2Seq

__all__ = ["DecoderState", "KVCache", "Seq2Seq", "transformer"]
