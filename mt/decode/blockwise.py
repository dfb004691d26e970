"""Blockwise argmax and top-k over CPU log-probs: the picks of greedy and beam search.

A fast path beside torch's ``max`` / ``topk``: the same values and positions (ties aside, as
``top_k`` says), pinned equal by ``tests/test_search.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Reductions that return positions (max, argmax, topk) are not vectorized on CPU, plain maxima
# (amax) are. So rows are searched by blocks of _BLOCK: the block maxima by `amax`, then
# positions only within the few blocks that matter. The rule: CPU rows wider than a block go
# blockwise; `python scripts/bench_kernels.py` times it against plain `max` and `topk`
# (docs/experiments.md has the figures), and tests pin the outputs to theirs.
_BLOCK = 64


def _blocks(x: Tensor, k: int) -> Tensor | None:
    """x [N, V] as [N, V / _BLOCK, _BLOCK], or None where blocks do not pay (or fit)."""
    n, v = x.shape
    if x.device.type != "cpu" or v % _BLOCK or v < 8 * k * _BLOCK or not x.is_contiguous():
        return None
    return x.view(n, v // _BLOCK, _BLOCK)


def pick_argmax(lprobs: Tensor) -> tuple[Tensor, Tensor]:
    """Most probable token of each row, the first on ties: tokens [N] and their log-probs [N]."""
    blocks = _blocks(lprobs, 1)
    if blocks is None:
        best, tokens = lprobs.max(dim=-1)
        return tokens, best
    block = blocks.amax(dim=2).argmax(dim=1)  # [N]: the first block that holds the maximum
    best, inner = blocks[torch.arange(blocks.size(0), device=block.device), block].max(dim=1)
    return block * _BLOCK + inner, best


def top_k(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``x.topk(k, dim=1)`` for x [N, V]: values and positions [N, k], largest first.

    The k blocks with the largest maxima hold the k largest values (a value above the k-th
    block maximum lies in a block ranked above it), so only their k * _BLOCK values are ranked.
    Among equal values, positions may come in another order than ``topk``'s own.
    """
    blocks = _blocks(x, k)
    if blocks is None:
        values, index = x.topk(k, dim=1)
        return values, index
    n = x.size(0)
    top = blocks.amax(dim=2).topk(k, dim=1).indices  # [N, k]
    candidates = blocks.gather(1, top.unsqueeze(2).expand(n, k, _BLOCK)).view(n, k * _BLOCK)
    values, pos = candidates.topk(k, dim=1)  # [N, k]
    return values, top.gather(1, pos // _BLOCK) * _BLOCK + pos % _BLOCK
