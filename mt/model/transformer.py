"""Encoder, Decoder and the Seq2Seq model.

`Seq2Seq` exposes teacher-forced `encode` / `decode` / `project` / `forward` for training and
`init_state` / `decode_step` (KV-cached, one token per row) for search.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mt.model.cache import DecoderState, KVCache
from mt.model.kernels import step_cache_dtype
from mt.model.layers import DecoderLayer, Embeddings, EncoderLayer
from mt.model.packing import Packing
from mt.model.positions import rope_angles
from mt.model.projection import Int8Rows, OneDNNRows
from mt.model.window import band_mask, encoder_window


def lean_step(x: Tensor) -> bool:
    """Whether decoder steps on x [N, D] take `DecoderLayer.step`: fp32 on CPU, outside
    autocast and autograd (search); `python scripts/bench_kernels.py` times it against
    `DecoderLayer.forward`, and tests pin its outputs to forward's."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.is_grad_enabled()
    )


def attend_mask(src_pad_mask: Tensor) -> Tensor:
    """Padding mask [B, S] (True = pad) -> SDPA mask [B, 1, 1, S] (True = attend).

    Built once per forward and shared by every layer; it broadcasts over heads and queries.
    """
    return ~src_pad_mask[:, None, None, :]


def _training_mask(src_pad_mask: Tensor, packing: Packing) -> Tensor | None:
    """SDPA memory mask, or None when the batch has no source padding (mask-free kernel)."""
    return None if packing.index is None else attend_mask(src_pad_mask)


class Encoder(nn.Module):
    """Embeddings, a stack of encoder layers and (pre-norm only) a final LayerNorm.

    Args:
        embed: Source embeddings.
        layers: Encoder layers.
        final_norm: LayerNorm (pre-norm) or Identity.
        attn_window: W > 0 limits self-attention to W positions either side; 0 = full.
    """

    def __init__(
        self,
        embed: Embeddings,
        layers: list[EncoderLayer],
        final_norm: nn.Module,
        attn_window: int = 0,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm
        self.attn_window = attn_window

    def forward(self, src: Tensor, packing: Packing, mask: Tensor | None) -> Tensor:
        """src [B, S] laid out by packing, mask [B, 1, 1, S] -> packed memory [N_s, D]."""
        x = self.embed(packing.pack(src), packing.positions())
        if self.attn_window:  # the band mask (or blocked attention) once for every layer
            mask, window = encoder_window(mask, packing.length, self.attn_window, src.device)
            for layer in self.layers:
                x = layer(x, packing, mask, window)
            return self.final_norm(x)
        for layer in self.layers:
            x = layer(x, packing, mask)
        return self.final_norm(x)


class Decoder(nn.Module):
    """Embeddings, a stack of decoder layers and (pre-norm only) a final LayerNorm.

    Args:
        embed: Target embeddings.
        layers: Decoder layers.
        final_norm: LayerNorm (pre-norm) or Identity.
        attn_window: W > 0 limits self-attention to the W previous positions; 0 = full.
    """

    def __init__(
        self,
        embed: Embeddings,
        layers: list[DecoderLayer],
        final_norm: nn.Module,
        attn_window: int = 0,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm
        self.attn_window = attn_window

    def _self_mask(self, n_queries: int, start: int, device: torch.device) -> Tensor | None:
        """Causal band over the self-attention keys [0, start + T), or None where it hides none.

        [T, T] in teacher forcing (start 0); [1, 1, 1, start + 1] for a decoder step.
        """
        n_keys = start + n_queries
        if not self.attn_window or n_keys <= self.attn_window + 1:  # no key is out of reach
            return None
        band = band_mask(n_queries, n_keys, self.attn_window, True, device, q_start=start)
        return band if start == 0 else band[None, None]

    def forward(
        self,
        tgt_in: Tensor,
        packing: Packing,
        memory: Tensor,
        src_packing: Packing,
        mask: Tensor | None,
    ) -> Tensor:
        """Teacher forcing.

        Args:
            tgt_in: Target input ids [B, T], laid out by `packing`.
            packing: Real target tokens (pad positions are skipped entirely).
            memory: Packed encoder output [N_s, D], laid out by `src_packing`.
            src_packing: Layout of the memory on its [B, S] grid.
            mask: Memory mask [B, 1, 1, S], True = attend; None without source padding.

        Returns:
            Packed hidden states [N_t, D].
        """
        x = self.embed(packing.pack(tgt_in), packing.positions())
        self_mask = self._self_mask(packing.length, 0, tgt_in.device)
        for layer in cast(list[DecoderLayer], self.layers):
            memory_kv = layer.cross_attn.project_kv(memory, src_packing)
            x = layer(x, packing, memory_kv, mask, self_mask=self_mask)
        return self.final_norm(x)

    def step(self, tokens: Tensor, state: DecoderState) -> Tensor:
        """tokens [N] at position `state.step` -> hidden [N, D]; appends to the caches."""
        packing = Packing.dense(tokens.shape[0], 1, tokens.device)  # one token per row
        # cross-attention sees the K rows of a source as K queries of one sequence: [B, K]
        # (the rows of DecoderState's layout, grouped by source)
        rows_per_source = state.rows_per_source
        cross_packing = Packing.dense(
            tokens.shape[0] // rows_per_source, rows_per_source, tokens.device
        )
        x = self.embed(tokens, tokens.new_full(tokens.shape, state.step))
        self_mask = self._self_mask(1, state.step, tokens.device)
        lean = self_mask is None and not self.training and lean_step(x)
        rope = None  # the lean steps' rotary angles, made once for all layers
        first = cast(DecoderLayer, self.layers[0]).self_attn
        if lean and first.rope:
            rope = rope_angles(state.step, 1, first.head_dim, x.device)
        layers = zip(self.layers, state.self_caches, state.cross_caches, strict=True)
        for layer, self_cache, cross in layers:
            memory_kv = (cross.keys, cross.values)
            if lean and layer.self_attn.max_relative_positions == 0:
                x = layer.step(x, self_cache, memory_kv, state.memory_bias, rows_per_source, rope)
                continue
            mask = state.memory_mask
            x = layer(x, packing, memory_kv, mask, self_cache, cross_packing, self_mask)
        return self.final_norm(x)


class Seq2Seq(nn.Module):
    """Encoder-decoder Transformer whose output projection is tied to the target embedding.

    Build it with `mt.model.builders.transformer` rather than by hand.

    Args:
        encoder: Source-side stack.
        decoder: Target-side stack; `decoder.embed.tokens.weight` [V, D] is the output projection.
        pad_id: Padding token id.
        output_bias: A fixed bias [V] added to every logit (a buffer, saved with the weights),
            or None (mt's own models: no bias, and no such key in the state dict). Imported
            models hold their `final_logits_bias` here, with -inf at the ids they never emit.
    """

    output_bias: Tensor | None

    def __init__(
        self, encoder: Encoder, decoder: Decoder, pad_id: int, output_bias: Tensor | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.pad_id = pad_id
        self.register_buffer("output_bias", output_bias)
        # The output projection laid out for CPU decoding: set on copies made for inference by
        # mt.decode.layout.quantize_int8 (int8) and onednn_layout (fp32).
        self.output_rows: Int8Rows | OneDNNRows | None = None

    def encode(self, src: Tensor, src_pad_mask: Tensor) -> Tensor:
        """src [B, S], src_pad_mask [B, S] (True = pad) -> memory [B, S, D] (zero at pads)."""
        packing = Packing.from_pad_mask(src_pad_mask)
        return packing.unpack(self.encoder(src, packing, _training_mask(src_pad_mask, packing)))

    def decode(self, tgt_in: Tensor, memory: Tensor, src_pad_mask: Tensor) -> Tensor:
        """Causal teacher forcing.

        Args:
            tgt_in: Target input ids [B, T], right-padded (pad positions only see earlier ones and
                are expected to be ignored by the loss).
            memory: Encoder output [B, S, D].
            src_pad_mask: Bool [B, S], True at source padding.

        Returns:
            Hidden states [B, T, D] after the final norm (zero at target pads).
        """
        src_packing = Packing.from_pad_mask(src_pad_mask)
        packing = Packing.from_pad_mask(tgt_in == self.pad_id)
        memory = src_packing.pack(memory)  # [B, S, D] -> [N_s, D]
        mask = _training_mask(src_pad_mask, src_packing)
        hidden = self.decoder(tgt_in, packing, memory, src_packing, mask)
        return packing.unpack(hidden)

    def project(self, hidden: Tensor) -> Tensor:
        """Hidden [..., D] -> logits [..., V] with the tied target embedding (and the output
        bias, if the model has one)."""
        if self.output_rows is not None:
            logits = self.output_rows(hidden)
        else:
            logits = F.linear(hidden, self.decoder.embed.tokens.weight)
        return logits if self.output_bias is None else logits + self.output_bias

    def forward(self, src: Tensor, src_pad_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits; pad positions of tgt_in are skipped and get all-zero logits.

        Args:
            src: Source ids [B, S].
            src_pad_mask: Bool [B, S], True at source padding.
            tgt_in: Target input ids [B, T], right-padded with pad_id.

        Returns:
            Logits [B, T, V].
        """
        src_packing = Packing.from_pad_mask(src_pad_mask)
        packing = Packing.from_pad_mask(tgt_in == self.pad_id)
        mask = _training_mask(src_pad_mask, src_packing)
        memory = self.encoder(src, src_packing, mask)  # [N_s, D]
        hidden = self.decoder(tgt_in, packing, memory, src_packing, mask)  # [N_t, D]
        # Unpack before projecting: zero hidden rows give zero logits, and a GEMM over the few pad
        # rows is cheaper than scattering/gathering [N_t, V] logits and their gradient.
        return self.project(packing.unpack(hidden))  # [N_t, D] -> [B, T, D] -> [B, T, V]

    def init_state(
        self,
        memory: Tensor,
        src_pad_mask: Tensor,
        max_len: int,
        rows_per_source: int = 1,
        vocab: Tensor | None = None,
    ) -> DecoderState:
        """Start incremental decoding for N = B x rows_per_source rows.

        Args:
            memory: Encoder output [B, S, D], one row per source sentence.
            src_pad_mask: Bool [B, S], True at source padding.
            max_len: Number of decode steps the self-attention caches must hold.
            rows_per_source: K rows decode each source (beam search: the beam size), laid
                out as `DecoderState` says; a source's cross-attention K/V are stored once and
                its K queries attend to them together, so beams never copy the memory.
            vocab: Output shortlist, candidate ids [C], or None for the whole vocabulary. Its
                rows of the output projection are sliced here, once; every `decode_step` then
                takes positions in `vocab` [N] and returns logits over it [N, C].

        Returns:
            State with cross-attention K/V computed once per layer and empty self-attention caches.
        """
        n_src, src_len, _ = memory.shape
        packing = Packing.dense(n_src, src_len, memory.device)  # pad rows stay: they are masked
        flat = memory.reshape(n_src * src_len, -1)  # [B, S, D] -> [B * S, D]
        cross, selfs = [], []
        for layer in cast(list[DecoderLayer], self.decoder.layers):
            k, v = layer.cross_attn.project_kv(flat, packing)  # 2 x [B, H, S, Dh]
            # Strided views of one [B, S, 2, H, Dh] buffer, made contiguous once here (else every
            # step's batched matmul copies them).
            dtype = step_cache_dtype(k)
            cross.append(KVCache.filled(k.to(dtype).contiguous(), v.to(dtype).contiguous()))
            _, h, _, dh = k.shape
            n_rows = n_src * rows_per_source
            selfs.append(KVCache.empty(n_rows, h, max_len, dh, dtype=dtype, device=k.device))
        project = None if vocab is None else self._shortlist_projection(vocab)
        return DecoderState(
            selfs, cross, attend_mask(src_pad_mask), rows_per_source, vocab, project
        )

    def _shortlist_projection(self, vocab: Tensor) -> Callable[[Tensor], Tensor]:
        """hidden [N, D] -> logits [N, C] over `vocab` [C]: the output projection's rows of
        those ids, sliced once, laid out as `output_rows` lays out the whole projection (int8,
        or fp32 for oneDNN) or in the dtype autocast would cast them to (so no step casts them
        again: autocast caches casts of parameters only)."""
        bias = None if self.output_bias is None else self.output_bias[vocab]  # [C]
        if self.output_rows is not None:
            laid_out = self.output_rows.rows(vocab.cpu())
            return laid_out if bias is None else lambda hidden: laid_out(hidden) + bias
        weight = self.decoder.embed.tokens.weight
        rows = weight.index_select(0, vocab.to(weight.device))
        device = weight.device.type
        if torch.is_autocast_enabled(device):
            rows = rows.to(torch.get_autocast_dtype(device))
            bias = None if bias is None else bias.to(rows.dtype)
        return functools.partial(F.linear, weight=rows, bias=bias)

    def decode_step(self, tokens: Tensor, state: DecoderState) -> Tensor:
        """Last token of each row, tokens [N] -> logits [N, V] for the next position.

        With a shortlist (`init_state(vocab=...)`), tokens are positions in it and the logits
        [N, C] cover its ids only. Advances `state.step` by one.
        """
        if state.vocab is not None:
            tokens = state.vocab[tokens]  # shortlist positions -> ids
        hidden = self.decoder.step(tokens, state)  # [N] -> [N, D]
        state.step += 1
        if state.project is not None:
            return state.project(hidden)
        return self.project(hidden)
