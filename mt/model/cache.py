"""Key/value caches for incremental decoding.

`KVCache` holds one attention layer's keys and values: preallocated and appended to for decoder
self-attention, filled once from the encoder memory for cross-attention. `DecoderState` bundles the
caches of every decoder layer with the memory mask and the step counter, owns the layout of K rows
per source, and reorders them together.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class KVCache:
    """Keys and values of one attention layer, laid out [N, H, L, Dh] (N rows, L capacity).

    Positions `[0, size)` along L are valid; `keys`/`values` are views of exactly those.

    Args:
        k: Key buffer [N, H, L, Dh].
        v: Value buffer [N, H, L, Dh].
        size: Number of valid positions already in the buffers.
    """

    def __init__(self, k: Tensor, v: Tensor, size: int = 0) -> None:
        self.k = k
        self.v = v
        self.size = size
        self._spare: tuple[Tensor, Tensor] | None = None  # reorder's second buffers

    @classmethod
    def empty(
        cls,
        n_rows: int,
        n_heads: int,
        max_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> KVCache:
        """A self-attention cache with room for `max_len` positions and none filled."""
        shape = (n_rows, n_heads, max_len, head_dim)
        k = torch.empty(shape, dtype=dtype, device=device)
        return cls(k, torch.empty_like(k), size=0)

    @classmethod
    def filled(cls, k: Tensor, v: Tensor) -> KVCache:
        """A cross-attention cache whose every position is valid (k, v [N, H, S, Dh])."""
        return cls(k, v, size=k.shape[2])

    @property
    def capacity(self) -> int:
        """Maximum number of positions the buffers hold (L)."""
        return self.k.shape[2]

    @property
    def keys(self) -> Tensor:
        """Valid keys [N, H, size, Dh] (a view, no copy)."""
        return self.k[:, :, : self.size]

    @property
    def values(self) -> Tensor:
        """Valid values [N, H, size, Dh] (a view, no copy)."""
        return self.v[:, :, : self.size]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write new positions after the valid ones and return all valid keys and values.

        Args:
            k: New keys [N, H, T, Dh].
            v: New values [N, H, T, Dh].

        Returns:
            Keys and values [N, H, size + T, Dh], views into the buffers.

        Raises:
            ValueError: If the new positions do not fit in the preallocated capacity.
        """
        end = self.size + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KVCache overflow: {end} positions exceed capacity {self.capacity}.")
        self.k[:, :, self.size : end] = k
        self.v[:, :, self.size : end] = v
        self.size = end
        return self.keys, self.values

    def reorder(self, index: Tensor, moved: Tensor | None = None) -> None:
        """Keep/reorder rows: row i becomes old row `index[i]` (index LongTensor [N']).

        Only the valid positions are moved; capacity is unchanged. `moved` [M], where given,
        lists the rows i with index[i] != i of a reorder that keeps the row count: then only
        those rows are rewritten (`DecoderState.reorder` passes it when M < N / 2).
        """
        if self.size == self.capacity:  # full (e.g. cross-attention): nothing to preserve
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
            return
        if moved is not None:  # gather the moved rows first: their sources may move too
            sources = index.index_select(0, moved)
            for valid in (self.keys, self.values):
                valid.index_copy_(0, moved, valid.index_select(0, sources))
            return
        if self._spare is None or self._spare[0].shape[0] < index.shape[0]:
            self._spare = (self.k.new_empty(index.shape[0], *self.k.shape[1:]),
                           self.v.new_empty(index.shape[0], *self.v.shape[1:]))  # fmt: skip
        # Beam search reorders every step: gather the valid positions straight into a spare
        # buffer (one copy, no temporary) and keep the old one as the next spare.
        spare_k, spare_v = (buf[: index.shape[0]] for buf in self._spare)
        torch.index_select(self.keys, 0, index, out=spare_k[:, :, : self.size])
        torch.index_select(self.values, 0, index, out=spare_v[:, :, : self.size])
        self._spare = (self.k, self.v)
        self.k, self.v = spare_k, spare_v

    def reset(self) -> None:
        """Mark every position invalid (buffers are kept for reuse)."""
        self.size = 0


class DecoderState:
    """Everything the decoder carries between `decode_step` calls.

    It owns the row layout of beam search: with K rows per source, row b*K + j is hypothesis j
    of source b (N = B * K rows). Sources keep their cross-attention K/V and memory mask once;
    `reorder` is the only way rows move, and search speaks to it in (source, beam) terms.

    Args:
        self_caches: Per-layer self-attention caches for N rows, preallocated for max_len steps.
        cross_caches: Per-layer cross-attention K/V computed once per source sentence [B, ...].
        memory_mask: Bool [B, 1, 1, S], True where the memory may be attended (not padding).
        rows_per_source: K.
        vocab: Output shortlist, candidate ids [C] (None: the whole vocabulary): decode steps
            then take and return positions in it (`mt.decode.search`).
        project: hidden [N, D] -> logits [N, C] over those ids: the output projection's rows,
            sliced once per search (`Seq2Seq.init_state`).
    """

    def __init__(
        self,
        self_caches: list[KVCache],
        cross_caches: list[KVCache],
        memory_mask: Tensor,
        rows_per_source: int = 1,
        vocab: Tensor | None = None,
        project: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.self_caches = self_caches
        self.cross_caches = cross_caches
        self.memory_mask = memory_mask
        self.rows_per_source = rows_per_source
        self.vocab = vocab
        self.project = project
        self.n_rows = memory_mask.shape[0] * rows_per_source  # N
        self.step = 0  # number of target positions already decoded
        self._memory_bias: Tensor | None = None

    @property
    def memory_bias(self) -> Tensor:
        """`memory_mask` as an additive mask [B, 1, 1, S]: 0 where attended, -inf at padding
        (fp32; made once per layout of the sources)."""
        if self._memory_bias is None:
            zeros = torch.zeros(self.memory_mask.shape, device=self.memory_mask.device)
            self._memory_bias = zeros.masked_fill_(~self.memory_mask, float("-inf"))
        return self._memory_bias

    @property
    def n_sources(self) -> int:
        """B: sources whose rows are live."""
        return self.memory_mask.shape[0]

    def reorder(self, sources: Tensor, beams: Tensor | None = None) -> None:
        """Keep, drop, reorder or repeat rows, source by source.

        New source i is old source `sources[i]`; its new row i*K + j continues old row
        `sources[i]*K + beams[i, j]` (beam search keeps a sentence's best extensions, repeats
        allowed, and drops finished sentences).

        Args:
            sources: LongTensor [B'], old source of each new source (repeats allowed).
            beams: LongTensor [B', K'] of old beam slots in [0, K); None when K is 1. The state
                has K' rows per source afterwards (beam search's first step runs one row per
                source, then repeats it: K 1, K' the beam).
        """
        k = self.rows_per_source
        if beams is None:
            if k != 1:
                raise ValueError(f"reorder needs beams with {k} rows per source.")
            rows = sources
        else:
            rows = (sources.unsqueeze(1) * k + beams).view(-1)  # [B', K'] -> [N' = B' * K']
            self.rows_per_source = beams.shape[1]
        moved = _moved_rows(rows, self.n_rows)
        for cache in self.self_caches:
            cache.reorder(rows, moved)
        unchanged = sources.shape[0] == self.n_sources and bool(
            (sources == torch.arange(self.n_sources, device=sources.device)).all()
        )
        if not unchanged:  # the per-source K/V and mask move only when the sources change
            for cache in self.cross_caches:
                cache.reorder(sources)
            self.memory_mask = self.memory_mask.index_select(0, sources)
            self._memory_bias = None
        self.n_rows = rows.shape[0]


def _moved_rows(rows: Tensor, n_rows: int) -> Tensor | None:
    """The rows i with rows[i] != i, when a reorder keeps all n_rows and moves fewer than half:
    copying only those (twice, through a temporary) then moves less memory than gathering every
    row. Beam search often keeps most hypotheses in their slots, and the self-attention caches
    are the largest tensors a step touches."""
    if rows.shape[0] != n_rows:
        return None
    moved = (rows != torch.arange(n_rows, device=rows.device)).nonzero().squeeze(1)
    return moved if 2 * moved.shape[0] < n_rows else None
