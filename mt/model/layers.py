"""Transformer building blocks: embeddings with positions, feed-forward, encoder and decoder layers.

Layers are pre-norm (LayerNorm inside each residual branch) or post-norm (after the residual add,
as in Vaswani et al. 2017), chosen by `norm_first`. Activations are packed tokens [N, D].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mt.model.attention import CrossAttention, SelfAttention
from mt.model.cache import KVCache
from mt.model.packing import Packing
from mt.model.positions import rotate_by

# swish is SiLU, x * sigmoid(x): most OPUS-MT (Marian) models use it
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "swish": F.silu,
}

# Layouts of the sinusoidal position table (`sinusoidal_table`), by the toolkit that uses them.
SINUSOIDS = ("vaswani", "marian", "fairseq")


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout; on CPU with a keep mask drawn as 16-bit uniforms from 64-bit words.

    F.dropout on CPU spends most of its time drawing one Bernoulli sample per element
    (`bernoulli_`); slicing 64-bit random words into four 16-bit draws avoids that (CPU only;
    `python scripts/bench_train.py` measures the training step it serves).
    p is quantised to 1/65536 and the scale uses the quantised keep probability (unbiased).
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    n_drop = round(p * 65536)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device)
    words.random_(-(2**63), None)  # full 64-bit range: every 16-bit slice is uniform
    keep = words.view(torch.int16)[: x.numel()].view(x.shape) >= n_drop - 32768
    # One pre-scaled float mask: a single multiply forward and backward, no bool promotion.
    return x * keep.to(x.dtype).mul_(65536 / (65536 - n_drop))


class Dropout(nn.Module):
    """Module wrapper of `dropout` (a drop-in for nn.Dropout)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """Any shape -> same shape."""
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def sinusoidal_table(n_positions: int, d_model: int, sinusoid: str = "vaswani") -> Tensor:
    """Fixed positions of Vaswani et al. (2017) -> [P, D], in one of three layouts.

    Dimension pair i (of D/2) turns at frequency w_i for position p:
    - "vaswani" (mt's own): w_i = 10000**(-2i / D), sin on even and cos on odd dimensions;
    - "marian" (Marian / OPUS-MT): the same frequencies, sin in the first half, cos in the second;
    - "fairseq" (fairseq, M2M100 / NLLB, CTranslate2): w_i = 10000**(-i / (D/2 - 1)), sin in
      the first half, cos in the second.
    """
    half = d_model // 2
    if sinusoid == "fairseq":  # in float32, as fairseq and M2M100 compute it, to the last bit
        freq = torch.exp(torch.arange(half).float() * -(math.log(1e4) / (half - 1)))
        angles32 = torch.arange(n_positions).float()[:, None] * freq[None, :]  # [P, D/2]
        table32 = torch.zeros(n_positions, d_model)
        table32[:, : 2 * half] = torch.cat([torch.sin(angles32), torch.cos(angles32)], dim=1)
        return table32  # an odd D leaves the last dimension zero
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    i = torch.arange(0, (d_model + 1) // 2, dtype=torch.float64)
    angles = pos * torch.exp(i * -(2 * math.log(1e4) / d_model))  # [P, ceil(D/2)]
    table = torch.zeros(n_positions, d_model, dtype=torch.float64)
    if sinusoid == "vaswani":
        table[:, 0::2] = torch.sin(angles)
        table[:, 1::2] = torch.cos(angles)[:, :half]
    else:  # marian: an odd D gives the sines the extra dimension, as Marian does
        table[:, : d_model - half] = torch.sin(angles)
        table[:, d_model - half :] = torch.cos(angles)[:, :half]
    return table.float()


class SinusoidalPositions(nn.Module):
    """Sinusoidal position table as a non-persistent buffer (not saved in checkpoints).

    Args:
        max_positions: Positions the table covers, from 0.
        d_model: D.
        sinusoid: The table's layout (`sinusoidal_table`).
        offset: Added to every position before the lookup: M2M100 counts positions from its
            padding id + 1 (2), so its first token sits at row 2 of the table.
    """

    table: Tensor

    def __init__(
        self, max_positions: int, d_model: int, sinusoid: str = "vaswani", offset: int = 0
    ) -> None:
        super().__init__()
        table = sinusoidal_table(max_positions + offset, d_model, sinusoid)
        self.register_buffer("table", table, persistent=False)
        self.offset = offset

    def forward(self, positions: Tensor) -> Tensor:
        """LongTensor [N] -> [N, D]."""
        if self.offset:
            positions = positions + self.offset
        return F.embedding(positions, self.table)


class LearnedPositions(nn.Module):
    """Learned absolute positions, initialised normal(0, D**-0.5) like the token embeddings."""

    def __init__(self, max_positions: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_positions, d_model))
        nn.init.normal_(self.weight, mean=0.0, std=d_model**-0.5)

    def forward(self, positions: Tensor) -> Tensor:
        """LongTensor [N] -> [N, D]."""
        return F.embedding(positions, self.weight)


class Embeddings(nn.Module):
    """Token embedding * sqrt(D) (or * 1) + positions, then dropout.

    Args:
        tokens: Token embedding [V, D] (possibly shared with another stack / the output layer).
        positions: `SinusoidalPositions` or `LearnedPositions`; None when positions enter
            self-attention instead (rope, relative).
        dropout: Dropout on the sum.
        scale: Multiply the token embeddings by sqrt(D); False leaves them as they are (Marian
            models with `scale_embedding=False`).
    """

    def __init__(
        self, tokens: nn.Embedding, positions: nn.Module | None, dropout: float, scale: bool = True
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.positions = positions
        self.scale = math.sqrt(tokens.embedding_dim) if scale else 1.0
        self.dropout = Dropout(dropout)

    def forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        """Packed ids [N] at positions [N] (within their sentences) -> [N, D]."""
        if self.positions is None:
            return self.dropout(self.tokens(ids) * self.scale)
        x = torch.add(self.positions(positions), self.tokens(ids), alpha=self.scale)
        return self.dropout(x)


class FeedForward(nn.Module):
    """Position-wise Linear(D, d_ff) -> activation -> activation dropout -> Linear(d_ff, D)."""

    def __init__(self, d_model: int, d_ff: int, activation: str, act_dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.act = ACTIVATIONS[activation]
        self.act_dropout = act_dropout
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """[N, D] -> [N, D]."""
        h = self.act(self.fc1(x))
        return self.fc2(dropout(h, self.act_dropout, self.training))


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward sublayers with residual connections."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        *,
        dropout: float,
        attn_dropout: float,
        act_dropout: float,
        activation: str,
        norm_first: bool,
        rope: bool = False,
        max_relative_positions: int = 0,
    ) -> None:
        super().__init__()
        self.self_attn = SelfAttention(
            d_model, n_heads, attn_dropout, rope=rope, max_relative_positions=max_relative_positions
        )
        self.ffn = FeedForward(d_model, d_ff, activation, act_dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: Tensor, packing: Packing, mask: Tensor | None, window: int = 0) -> Tensor:
        """Packed x [N, D] on a [B, S] grid -> [N, D].

        mask is True where attention may look: key padding [B, 1, 1, S] (True = real token) or
        a band mask [B, 1, S, S]; window > 0 attends by blocks (`SelfAttention`).
        """
        if self.norm_first:
            x = x + self.dropout(self.self_attn(self.norm1(x), packing, mask, window=window))
            return x + self.dropout(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.self_attn(x, packing, mask, window=window)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the memory, and feed-forward sublayers."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        *,
        dropout: float,
        attn_dropout: float,
        act_dropout: float,
        activation: str,
        norm_first: bool,
        rope: bool = False,
        max_relative_positions: int = 0,
    ) -> None:
        super().__init__()
        self.self_attn = SelfAttention(
            d_model, n_heads, attn_dropout, rope=rope, max_relative_positions=max_relative_positions
        )
        self.cross_attn = CrossAttention(d_model, n_heads, attn_dropout)
        self.ffn = FeedForward(d_model, d_ff, activation, act_dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first

    def forward(
        self,
        x: Tensor,
        packing: Packing,
        memory_kv: tuple[Tensor, Tensor],
        memory_mask: Tensor | None,
        cache: KVCache | None = None,
        cross_packing: Packing | None = None,
        self_mask: Tensor | None = None,
    ) -> Tensor:
        """Run one decoder layer.

        Args:
            x: Packed target-side input [N, D] on a [B, T] grid.
            packing: Layout of x.
            memory_kv: This layer's cross-attention keys and values [B, H, S, Dh].
            memory_mask: Bool [B, 1, 1, S], True where the memory is a real token.
            cache: Self-attention cache for incremental decoding; without one, attention is causal
                over the T given positions (teacher forcing).
            cross_packing: Layout of x for cross-attention when it differs from `packing`
                (incremental beam decoding: the [B*K, 1] rows regrouped as [B, K]).
            self_mask: Bool self-attention mask, True = attend (a causal band [T, T] in teacher
                forcing, or [1, 1, 1, S] over the cached steps); None: causal, or all cached.

        Returns:
            Packed output [N, D].
        """
        step = cache is not None  # incremental decoding
        causal = not step and self_mask is None
        k, v = memory_kv
        cp = cross_packing or packing
        sm = self_mask
        if self.norm_first:
            x = x + self.dropout(self.self_attn(self.norm1(x), packing, sm, causal, cache))
            x = x + self.dropout(self.cross_attn(self.norm2(x), cp, k, v, memory_mask, step))
            return x + self.dropout(self.ffn(self.norm3(x)))
        x = self.norm1(x + self.dropout(self.self_attn(x, packing, sm, causal, cache)))
        x = self.norm2(x + self.dropout(self.cross_attn(x, cp, k, v, memory_mask, step)))
        return self.norm3(x + self.dropout(self.ffn(x)))

    def step(
        self,
        x: Tensor,
        cache: KVCache,
        memory_kv: tuple[Tensor, Tensor],
        memory_bias: Tensor,
        rows_per_source: int,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """`forward` for one decoder step in fp32 on CPU, in fewer operations (eval mode).

        A step's matrices are small, so its time goes as much to the number of operations as
        to the arithmetic: this path skips the packing, autocast and dropout layers and adds
        the memory mask as a precomputed bias. Rope is applied; Shaw relative positions and
        windowed self-attention take `forward` (`Decoder.step` chooses).

        Args:
            x: Hidden state of the N rows [N, D] at position `cache.size`.
            cache: This layer's self-attention cache; the step's keys and values are appended.
            memory_kv: Cross-attention keys and values [B, H, S, Dh], one per source.
            memory_bias: [B, 1, 1, S], 0 where the memory is a real token and -inf at padding.
            rows_per_source: K: the N = B * K rows are K queries of each source.
            rope: `mt.model.positions.rope_angles` of position `cache.size`, made once per step
                for every layer (`Decoder.step`); None for models without rope.

        Returns:
            [N, D].
        """
        sa, ca = self.self_attn, self.cross_attn
        n, h, dh = x.shape[0], sa.n_heads, sa.head_dim
        y = self.norm1(x) if self.norm_first else x
        qkv = sa.qkv(y).view(n, 3, h, 1, dh)
        if sa.rope:  # queries and keys rotated together: [N, 2, H, 1, Dh]
            if rope is None:
                raise ValueError("A rope layer's step needs the step's rope_angles.")
            q, k = rotate_by(qkv[:, :2], *rope).unbind(1)
            v = qkv[:, 2]
        else:
            q, k, v = qkv.unbind(1)  # 3 x [N, H, 1, Dh]
        keys, values = cache.append(k, v)
        y = sa.out(_attend_step(q, keys, values, None).view(n, h * dh))
        x = x + y if self.norm_first else self.norm1(x + y)
        y = self.norm2(x) if self.norm_first else x
        q = ca.q(y).view(n // rows_per_source, rows_per_source, h, dh).transpose(1, 2)
        y = _attend_step(q, *memory_kv, memory_bias)  # [B, H, K, Dh]
        y = ca.out(y.transpose(1, 2).reshape(n, h * dh))
        x = x + y if self.norm_first else self.norm2(x + y)
        y = self.ffn(self.norm3(x) if self.norm_first else x)
        return x + y if self.norm_first else self.norm3(x + y)


def _attend_step(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(Dh) + bias) v for q [B, H, T, Dh], k/v [B, H, S, Dh] -> [B, H, T, Dh]
    (`mt.model.kernels.attention_by_matmul` with an additive mask, in fp32)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)  # [B, H, T, S]
    if bias is not None:
        scores.add_(bias)
    return torch.matmul(torch.softmax(scores, dim=-1), v)
