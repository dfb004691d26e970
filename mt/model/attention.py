"""Multi-head attention on `F.scaled_dot_product_attention`.

`SelfAttention` projects Q, K, V with one fused linear and can append to a `KVCache`;
`CrossAttention` projects the memory's K, V with one fused linear, once per source when cached.
Inputs and outputs are packed tokens [N, D] (see `mt.model.packing`); SDPA runs on the padded grid.
Self-attention optionally rotates queries and keys (rope), adds Shaw relative positions, or
attends within a window by blocks (`mt.model.positions`, `mt.model.window`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mt.model.cache import KVCache
from mt.model.kernels import attention
from mt.model.packing import Packing
from mt.model.positions import RelativeTables, relative_attention, relative_index, rotate
from mt.model.window import merge_windows, split_windows


def _init_fused(linear: nn.Linear, n_chunks: int) -> None:
    """Xavier-uniform each [D, D] block of a fused projection as if it were its own linear."""
    for block in linear.weight.data.chunk(n_chunks, dim=0):
        nn.init.xavier_uniform_(block)
    nn.init.zeros_(linear.bias)


def _linear(d_in: int, d_out: int) -> nn.Linear:
    linear = nn.Linear(d_in, d_out)
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class _Attention(nn.Module):
    """Shared output projection and SDPA call.

    Args:
        d_model: Model dimension D.
        n_heads: Number of heads H (D must be divisible by H).
        attn_dropout: Dropout on attention probabilities, applied only in training.
    """

    def __init__(self, d_model: int, n_heads: int, attn_dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.attn_dropout = attn_dropout
        self.out = _linear(d_model, d_model)

    def _split(self, x: Tensor, n: int) -> tuple[Tensor, ...]:
        """[B, L, n*D] -> n tensors [B, H, L, Dh], strided views of x (no copy)."""
        b, length, _ = x.shape
        # [B, L, n*D] -> [B, L, n, H, Dh] -> n x [B, L, H, Dh] -> n x [B, H, L, Dh]. Unbinding dim 2
        # (not a leading permuted dim) lets autograd stack the grads straight into [B, L, n, H, Dh].
        parts = x.view(b, length, n, self.n_heads, self.head_dim).unbind(2)
        return tuple(part.transpose(1, 2) for part in parts)

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        causal: bool,
        packing: Packing,
        incremental: bool = False,
    ) -> Tensor:
        """q [B, H, T, Dh], k/v [B, H, S, Dh], bool mask (True = attend) -> packed [N, D]."""
        p = self.attn_dropout if self.training else 0.0
        y = attention(q, k, v, mask, p, causal, incremental and not self.training)
        return self._merge(y, packing)

    def _merge(self, y: Tensor, packing: Packing) -> Tensor:
        """Heads [B, H, T, Dh] -> output projection of the packed tokens [N, D]."""
        # [B, H, T, Dh] -> [B, T, H, Dh] -> [B, T, D]; the CPU flash kernel returns a transposed
        # view of a [B, T, H, Dh] buffer, so this reshape is free.
        y = y.transpose(1, 2).reshape(packing.batch, packing.length, -1)
        return self.out(packing.pack(y))


class SelfAttention(_Attention):
    """Self-attention with fused QKV projection and an optional KV cache.

    Args:
        d_model: Model dimension D.
        n_heads: Number of heads H.
        attn_dropout: Dropout on attention probabilities, applied only in training.
        rope: Rotate queries and keys by their positions (`mt.model.positions.rotate`).
        max_relative_positions: k > 0 adds Shaw et al. relative key and value embeddings
            [2k+1, Dh] for distances clipped to [-k, k], shared by the heads; 0 adds none.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        attn_dropout: float = 0.0,
        *,
        rope: bool = False,
        max_relative_positions: int = 0,
    ) -> None:
        super().__init__(d_model, n_heads, attn_dropout)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        _init_fused(self.qkv, 3)
        self.rope = rope
        self.max_relative_positions = max_relative_positions
        if max_relative_positions > 0:  # parameters only when enabled: default state_dict as is
            n_rows = 2 * max_relative_positions + 1
            self.relative_keys = nn.Parameter(torch.empty(n_rows, self.head_dim))
            self.relative_values = nn.Parameter(torch.empty(n_rows, self.head_dim))
            # normal(0, Dh**-0.5): q . a^K starts on the scale of q . k, like the embeddings
            nn.init.normal_(self.relative_keys, std=self.head_dim**-0.5)
            nn.init.normal_(self.relative_values, std=self.head_dim**-0.5)

    def forward(
        self,
        x: Tensor,
        packing: Packing,
        mask: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        window: int = 0,
    ) -> Tensor:
        """Attend over the sequence itself (plus cached past positions).

        Positions (rope, relative): without a cache the T grid columns are positions 0..T-1;
        with one, the new positions follow the cached ones (cache.size == DecoderState.step).

        Args:
            x: Packed input [N, D] laid out by `packing` on a [B, T] grid.
            packing: Layout of x.
            mask: Bool, True = attend, broadcastable to [B, H, T, S]; e.g. [B, 1, 1, T] key
                padding, or a band mask (`mt.model.window.band_mask`) for windowed attention.
            causal: Mask future positions (teacher forcing; not used with a cache).
            cache: If given, this call's K/V are appended and attention covers all cached positions.
            window: W > 0: non-causal attention to the keys within W positions, by blocks
                (memory S * W); mask must then be key padding [B, 1, 1, T] or None. No cache.

        Returns:
            Packed output [N, D].
        """
        if window > 0 and (cache is not None or causal):
            raise ValueError("blocked window attention is non-causal and takes no cache.")
        q, k, v = self._split(packing.unpack(self.qkv(x)), 3)  # [N, 3D] -> 3 x [B, H, T, Dh]
        start = 0 if cache is None else cache.size  # position of the first query
        if self.rope:
            q, k = rotate(q, start), rotate(k, start)
        if cache is not None:
            k, v = cache.append(k, v)
        if window > 0:  # block i's queries sit at W + [0, W) of its 3W keys
            qb, kb, vb, block_mask = split_windows(q, k, v, mask, window)
            yb = self._heads(qb, kb, vb, block_mask, False, window, False)
            return self._merge(merge_windows(yb, packing.batch, packing.length), packing)
        return self._merge(self._heads(q, k, v, mask, causal, start, cache is not None), packing)

    def _heads(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        causal: bool,
        q_start: int,
        incremental: bool,
    ) -> Tensor:
        """q [B, H, T, Dh] at key positions q_start + [0, T), k/v [B, H, S, Dh] -> [B, H, T, Dh]."""
        p = self.attn_dropout if self.training else 0.0
        if self.max_relative_positions == 0:
            return attention(q, k, v, mask, p, causal, incremental and not self.training)
        index = relative_index(
            q_start, q.shape[2], k.shape[2], self.max_relative_positions, q.device
        )
        rel = RelativeTables(index, self.relative_keys, self.relative_values)
        return relative_attention(q, k, v, mask, p, causal, rel)


class CrossAttention(_Attention):
    """Attention from decoder positions to the encoder memory with fused KV projection."""

    def __init__(self, d_model: int, n_heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__(d_model, n_heads, attn_dropout)
        self.q = _linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        _init_fused(self.kv, 2)

    def project_kv(self, memory: Tensor, packing: Packing) -> tuple[Tensor, Tensor]:
        """Packed memory [N_s, D] on a [B, S] grid -> keys, values [B, H, S, Dh] (zero at pads)."""
        k, v = self._split(packing.unpack(self.kv(memory)), 2)  # [N_s, 2D] -> 2 x [B, H, S, Dh]
        return k, v

    def forward(
        self,
        x: Tensor,
        packing: Packing,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        incremental: bool = False,
    ) -> Tensor:
        """Attend from decoder positions to the memory.

        Args:
            x: Packed decoder input [N, D] laid out by `packing` on a [B, T] grid.
            packing: Layout of x.
            k: Memory keys [B, H, S, Dh] from `project_kv` (or a cross-attention cache).
            v: Memory values [B, H, S, Dh].
            mask: Bool [B, 1, 1, S], True where the memory is a real token; None if all are.
            incremental: A decoder step (the memory's K/V come from a cache).

        Returns:
            Packed output [N, D].
        """
        (q,) = self._split(packing.unpack(self.q(x)), 1)  # [N, D] -> [B, H, T, Dh]
        return self._attend(q, k, v, mask, False, packing, incremental)
