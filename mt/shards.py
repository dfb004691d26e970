"""Binarized splits on disk: one flat token array plus offsets per split and side, memory-mapped.

`{split}.{side}.tokens.npy` holds every sentence's ids back to back (uint16 when the vocabulary
fits, else int32); `{split}.{side}.offsets.npy` holds N+1 int64 offsets, so sentence i is
tokens[offsets[i]:offsets[i+1]]. No bos/eos are stored.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIDES = ("src", "tgt")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


def shard_paths(folder: Path, split: str, side: str) -> tuple[Path, Path]:
    stem = folder / f"{split}.{side}"
    return stem.with_name(stem.name + ".tokens.npy"), stem.with_name(stem.name + ".offsets.npy")


def flatten(ids: list[list[int]], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate id lists into (tokens [total], lengths [N]) without a Python loop per token."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    total = int(lengths.sum())
    tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=total)
    return tokens, lengths


def write_shard(folder: Path, split: str, side: str, chunks: list[tuple[np.ndarray, np.ndarray]]):
    """Write one split side from (tokens, lengths) chunks; returns the lengths [N]."""
    tokens = np.concatenate([t for t, _ in chunks]) if chunks else np.zeros(0, np.uint16)
    lengths = np.concatenate([n for _, n in chunks]) if chunks else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens_path, offsets_path = shard_paths(folder, split, side)
    np.save(tokens_path, tokens)
    np.save(offsets_path, offsets)
    return lengths


@dataclass
class Shard:
    """One memory-mapped split side."""

    tokens: np.ndarray
    offsets: np.ndarray

    @classmethod
    def load(cls, folder: Path, split: str, side: str) -> Shard:
        tokens_path, offsets_path = shard_paths(folder, split, side)
        return cls(np.load(tokens_path, mmap_mode="r"), np.load(offsets_path))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)
