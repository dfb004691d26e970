"""Binarized splits on disk: one flat token array plus offsets per split and side, memory-mapped.

`{split}.{side}.tokens.npy` holds every sentence's ids back to back (uint16 when the vocabulary
fits, else int32); `{split}.{side}.offsets.npy` holds N+1 int64 offsets, so sentence i is
tokens[offsets[i]:offsets[i+1]]. No bos/eos are stored.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mt.errors import MTError

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


def write_shard(
    folder: Path, split: str, side: str, chunks: Iterable[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Write one split side from (tokens, lengths) chunks; returns the lengths [N].

    The token chunks go to the .npy file one after the other, never concatenated in memory:
    the file is the one `np.save` writes of their concatenation.
    """
    tokens: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    for chunk_tokens, chunk_lengths in chunks:
        tokens.append(chunk_tokens)
        lengths.append(chunk_lengths)
    dtype = tokens[0].dtype if tokens else np.dtype(np.uint16)
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    offsets = np.zeros(len(all_lengths) + 1, dtype=np.int64)
    np.cumsum(all_lengths, out=offsets[1:])
    tokens_path, offsets_path = shard_paths(folder, split, side)
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": (sum(len(t) for t in tokens),),
    }
    with open(tokens_path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for chunk_tokens in tokens:
            f.write(np.ascontiguousarray(chunk_tokens, dtype=dtype).data)
    np.save(offsets_path, offsets)
    return all_lengths


@dataclass
class Shard:
    """One memory-mapped split side."""

    tokens: np.ndarray
    offsets: np.ndarray

    @classmethod
    def load(cls, folder: Path, split: str, side: str) -> Shard:
        tokens_path, offsets_path = shard_paths(folder, split, side)
        try:
            return cls(np.load(tokens_path, mmap_mode="r"), np.load(offsets_path))
        except (OSError, ValueError, EOFError) as exc:  # missing, truncated, or not .npy
            what = "is missing" if isinstance(exc, FileNotFoundError) else "is damaged"
            name = Path(getattr(exc, "filename", None) or tokens_path).name
            raise MTError(
                f"data folder {folder}: {name} {what} "
                f"({split} {side}); prepare it again with `mt prepare ... force=true`."
            ) from None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)
