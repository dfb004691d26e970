"""Training batches: the binarized pairs of a split, token-budget length buckets, collation.

A batch holds at most `max_tokens` padded tokens on its longer side. Each epoch draws a fresh
order from (seed, epoch): sentences are shuffled, stably sorted by length, cut into
batches, and the batches shuffled; under DDP each rank takes every world_size-th batch. The
order is a pure function of (seed, epoch), so a resumed run finds its place by batch index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mt.shards import Shard
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Batch:
    """Padded tensors of one batch; masks are True at padding."""

    src: Tensor  # [B, S]
    src_pad_mask: Tensor  # [B, S]
    tgt_in: Tensor  # [B, T] bos + target
    tgt_out: Tensor  # [B, T] target + eos
    n_tgt_tokens: int  # non-pad positions in tgt_out
    ids: Tensor  # [B] sentence indices in the split

    def to(self, device: torch.device) -> Batch:
        """The batch on `device`; to CUDA through pinned memory, so the copy is asynchronous."""
        if device.type == "cuda":
            move = lambda t: t.pin_memory().to(device, non_blocking=True)  # noqa: E731
        else:
            move = lambda t: t.to(device)  # noqa: E731
        return Batch(
            move(self.src),
            move(self.src_pad_mask),
            move(self.tgt_in),
            move(self.tgt_out),
            self.n_tgt_tokens,
            self.ids,
        )


class ParallelData:
    """The source and target shards of one split, truncated to `max_len` tokens per side."""

    def __init__(
        self, folder: str | Path, split: str, max_len: int, tgt_first: int | None = None
    ) -> None:
        """`tgt_first`: the id every target starts with (a language code, as an NLLB run's
        data has), which decoding forces; None: none."""
        self.tgt_first = tgt_first
        self.src = Shard.load(Path(folder), split, "src")
        self.tgt = Shard.load(Path(folder), split, "tgt")
        if len(self.src) != len(self.tgt):
            raise ValueError(
                f"{folder}: {split} has {len(self.src)} sources, {len(self.tgt)} targets"
            )
        self.max_len = max_len
        # +1: eos on the source, bos/eos on the shifted target
        self.src_lens = np.minimum(self.src.lengths, max_len - 1) + 1
        self.tgt_lens = np.minimum(self.tgt.lengths, max_len - 1) + 1

    def __len__(self) -> int:
        return len(self.src)

    def collate(self, ids: np.ndarray) -> Batch:
        """Pad sentences `ids` into a Batch (source + eos; target shifted with bos / eos)."""
        B, S, T = len(ids), int(self.src_lens[ids].max()), int(self.tgt_lens[ids].max())
        src = np.full((B, S), PAD_ID, dtype=np.int64)
        tgt_in = np.full((B, T), PAD_ID, dtype=np.int64)
        tgt_out = np.full((B, T), PAD_ID, dtype=np.int64)
        tgt_in[:, 0] = BOS_ID
        cut = self.max_len - 1
        for row, i in enumerate(ids):
            s, t = self.src[i][:cut], self.tgt[i][:cut]
            src[row, : len(s)], src[row, len(s)] = s, EOS_ID
            tgt_in[row, 1 : len(t) + 1] = t
            tgt_out[row, : len(t)], tgt_out[row, len(t)] = t, EOS_ID
        src_t = torch.from_numpy(src)
        return Batch(
            src_t,
            src_t == PAD_ID,
            torch.from_numpy(tgt_in),
            torch.from_numpy(tgt_out),
            int(self.tgt_lens[ids].sum()),
            torch.from_numpy(np.asarray(ids, dtype=np.int64)),
        )


def batches_by_tokens(
    order: np.ndarray, lens: np.ndarray, max_tokens: int, max_sentences: int | None = None
) -> list[np.ndarray]:
    """Cut `order` (already length-sorted) into runs whose padded size fits `max_tokens`.

    The one batcher of mt: training and validation batches (`epoch_batches`, `eval_batches`)
    and translation batches (`mt.translate`) all come from it.

    Args:
        order: sentence indices in batch order, [N].
        lens: padded length of each sentence, [N total] (training: its longer side;
            translation: its source).
        max_tokens: budget of B x max length per batch; a longer sentence gets a batch alone.
        max_sentences: at most this many sentences per batch; None for no limit.
    """
    batches, start, longest = [], 0, 0
    sorted_lens = lens[order].tolist()
    cap = max_sentences or len(order) + 1
    for pos, length in enumerate(sorted_lens):
        longest_if_added = max(longest, length)
        over = longest_if_added * (pos - start + 1) > max_tokens or pos - start + 1 > cap
        if pos > start and over:
            batches.append(order[start:pos])
            start, longest_if_added = pos, length
        longest = longest_if_added
    if start < len(order):
        batches.append(order[start:])
    return batches


def epoch_batches(
    data: ParallelData, max_tokens: int, seed: int, epoch: int, rank: int = 0, world: int = 1
) -> list[np.ndarray]:
    """The batches rank `rank` trains on in `epoch`: bucketed by length, shuffled from the seed."""
    rng = np.random.default_rng([seed, epoch])
    lens = np.maximum(data.src_lens, data.tgt_lens)
    shuffled = rng.permutation(len(data))
    # stable sort by (target, source) length: equal lengths keep their shuffled order
    order = shuffled[np.lexsort((data.src_lens[shuffled], data.tgt_lens[shuffled]))]
    batches = batches_by_tokens(order, lens, max_tokens)
    batches = [batches[i] for i in rng.permutation(len(batches))]
    usable = len(batches) - len(batches) % world  # every rank takes the same number of steps
    return batches[rank:usable:world]


def eval_batches(data: ParallelData, max_tokens: int) -> list[np.ndarray]:
    """Deterministic length-sorted batches covering every sentence once (validation, test)."""
    lens = np.maximum(data.src_lens, data.tgt_lens)
    return batches_by_tokens(np.argsort(data.src_lens, kind="stable"), lens, max_tokens)
