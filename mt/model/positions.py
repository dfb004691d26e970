"""Relative position schemes inside self-attention: rotary embeddings and Shaw relative positions.

Both see positions only through the self-attention call: without a KV cache the queries and keys
of a [B, T] grid sit at the columns 0..T-1 (the values `Packing.positions()` gives each real token
of a right-padded batch); a decoder step's queries sit at `cache.size` (= `DecoderState.step`)
and its keys at 0..cache.size. Cross-attention gets neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ROPE_BASE = 10_000.0


def rope_angles(
    start: int, length: int, head_dim: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Cosines and signed sines [T, Dh] of positions start + [0, T), laid out for `rotate_by`.

    Non-interleaved (GPT-NeoX / "half-split") layout: dimension i of the first half and
    dimension i of the second half form the pair rotated by angle pos * ROPE_BASE**(-2i / Dh).
    The angles are computed in float64 (exact enough at any position), returned in float32:
    cos repeated over both halves, sin negated on the first half.
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim
    pos = torch.arange(start, start + length, dtype=torch.float64, device=device)
    angles = pos[:, None] * ROPE_BASE ** (-exponent)[None, :]  # [T, Dh/2]
    cos, sin = angles.cos().float(), angles.sin().float()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def rotate_by(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [..., T, Dh] rotated by `rope_angles` [T, Dh]: pairs (x1, x2) of the two halves become
    (x1 cos - x2 sin, x2 cos + x1 sin), in float32; the result has x's dtype."""
    xf = x.float()
    swapped = xf.roll(x.shape[-1] // 2, dims=-1)  # (x2, x1)
    return (xf * cos + swapped * sin).to(x.dtype)


def rotate(x: Tensor, start: int) -> Tensor:
    """Rotary position embedding (Su et al. 2021) of queries or keys at positions start + [0, T),
    so q_m . k_n depends on m - n only (`rope_angles` gives the layout).

    Args:
        x: Queries or keys [B, H, T, Dh], Dh even.
        start: Position of the first of the T positions.

    Returns:
        Rotated x [B, H, T, Dh].
    """
    return rotate_by(x, *rope_angles(start, x.shape[-2], x.shape[-1], x.device))


def relative_index(
    q_start: int, n_queries: int, n_keys: int, k: int, device: torch.device
) -> Tensor:
    """Shaw et al. (2018) clipped distances as table rows: clip(j - i, -k, k) + k -> [T, S].

    Queries sit at q_start + [0, T), keys at [0, S); rows index a [2k+1, Dh] embedding table.
    """
    q_pos = torch.arange(q_start, q_start + n_queries, device=device)
    k_pos = torch.arange(n_keys, device=device)
    return (k_pos[None, :] - q_pos[:, None]).clamp(-k, k) + k


@dataclass
class RelativeTables:
    """One layer's relative positions: which table row each (query, key) pair uses, and tables.

    Args:
        index: LongTensor [T, S] of rows in [0, 2k], from `relative_index`.
        keys: Relative key embeddings a^K [2k+1, Dh], shared by the heads.
        values: Relative value embeddings a^V [2k+1, Dh], shared by the heads.
    """

    index: Tensor
    keys: Tensor
    values: Tensor


def relative_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    dropout_p: float,
    causal: bool,
    rel: RelativeTables,
) -> Tensor:
    """Self-attention with relative position keys and values (Shaw et al. 2018, eqs. 3-5).

    e_ij = q_i (k_j + a^K_ij) / sqrt(Dh), z_i = sum_j softmax(e)_ij (v_j + a^V_ij). SDPA cannot
    add the a^V term, so the scores are explicit; both relative terms go through the [2k+1]
    distinct rows instead of materialising [T, S, Dh] embeddings: q a^K is q @ keys^T gathered
    by the index, and sum_j p_ij a^V_ij is p summed into its 2k+1 buckets @ values.

    Args:
        q: Queries [B, H, T, Dh].
        k: Keys [B, H, S, Dh].
        v: Values [B, H, S, Dh].
        mask: Bool, True = attend, broadcastable to [B, H, T, S]; or None.
        dropout_p: Dropout on the attention probabilities.
        causal: Also mask keys after each query (T == S).
        rel: The index [T, S] and tables of this layer.

    Returns:
        Output [B, H, T, Dh] in q's dtype.
    """
    k, v = k.to(q.dtype), v.to(q.dtype)  # a decoder step's caches may be fp32 under autocast
    rel_k, rel_v = rel.keys.to(q.dtype), rel.values.to(q.dtype)
    scores = torch.matmul(q, k.transpose(-1, -2))  # [B, H, T, S]
    index = rel.index.expand(scores.shape)  # [T, S] -> [B, H, T, S] (a view)
    scores = scores + torch.matmul(q, rel_k.t()).gather(-1, index)  # [B, H, T, 2k+1] -> [.., S]
    scores = scores.float() * q.shape[-1] ** -0.5  # softmax in fp32 under autocast too
    if causal:
        t, s = scores.shape[-2:]
        future = torch.ones(t, s, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(mask.logical_not(), float("-inf"))
    probs = F.dropout(scores.softmax(-1), dropout_p) if dropout_p > 0 else scores.softmax(-1)
    buckets = probs.new_zeros(*probs.shape[:-1], rel_k.shape[0]).scatter_add_(-1, index, probs)
    probs, buckets = probs.to(q.dtype), buckets.to(q.dtype)
    return torch.matmul(probs, v) + torch.matmul(buckets, rel_v)  # [B, H, T, Dh]
