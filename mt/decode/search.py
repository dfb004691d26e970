"""What every search shares: the decoder it drives, its limits, its result and its step.

``IncrementalDecoder`` is the interface search needs from a model (``encode``, ``init_state``,
``decode_step``); :class:`Limits` holds the bos/eos ids and length caps every search takes;
:class:`Hypothesis` is one finished translation. :class:`Stepper` runs one decoder step and
turns its logits into float32 log-probs with forced endings, target prefixes and n-gram bans
applied. The searches themselves live in ``mt.decode.greedy`` (greedy, sampling) and
``mt.decode.beam``; all are pure tensor code with no I/O. Each runs under ``torch.no_grad``,
not ``inference_mode``: autocast caches its bf16 copies of the weights only outside inference
mode, and without the cache every step casts every weight again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

_NEG_INF = float("-inf")


class IncrementalState(Protocol):
    """Decoder cache of K rows per source, e.g. ``mt.model.DecoderState``, which owns the layout."""

    def reorder(self, sources: Tensor, beams: Tensor | None = None) -> None:
        """New source i continues old source ``sources[i]`` [B'] with its old beam slots
        ``beams[i]`` [B', K] (None when K is 1). K may differ from the old rows per source:
        beam search starts with one row per source and repeats it into K after one step."""


class IncrementalDecoder(Protocol):
    """What search needs from a model: ``mt.model.Seq2Seq`` or a scripted test fake."""

    def encode(self, src: Tensor, src_pad_mask: Tensor) -> Tensor:
        """src [B, S] -> memory [B, ...] (batch first)."""

    def init_state(
        self,
        memory: Tensor,
        src_pad_mask: Tensor,
        max_len: int,
        rows_per_source: int = 1,
        vocab: Tensor | None = None,
    ) -> IncrementalState:
        """Decoder state for B sources x ``rows_per_source`` (K) rows, up to ``max_len`` steps.

        ``decode_step`` takes and returns the rows in the state's order: for each source,
        its K rows (search views [N, ...] as [B, K, ...]). With a shortlist ``vocab``
        (candidate ids [C]) ``decode_step`` takes and returns positions in ``vocab`` (tokens
        [N] in [0, C), logits [N, C]), as ``mt.model.Seq2Seq`` does; a decoder that cannot
        score a shortlist raises ValueError when given one.
        """

    def decode_step(self, tokens: Tensor, state: Any) -> Tensor:
        """Last token of each row, tokens [N] -> next-token logits [N, V]; advances state."""


@dataclass
class Hypothesis:
    """One finished translation of one source sentence."""

    tokens: list[int]  # output ids without bos/eos
    score: float  # logprob / length_penalty(len(tokens) + 1, lenpen): what n-best lists sort by
    logprob: float  # raw sum of the token log-probs, eos included
    complete: bool = True  # meets every lexical constraint (False: it hit its length cap first)


@dataclass(frozen=True)
class Limits:
    """Where every output starts and ends, shared by all search functions.

    A sentence emits at most int(max_len_a * src_len + max_len_b) tokens before eos (then eos
    is forced); src_len counts non-pad tokens. ``max_len`` caps that whatever the source
    length: a model with P positions can emit at most P - 1 tokens (bos takes position 0).
    """

    bos_id: int  # first input token of every output
    eos_id: int  # the token that ends an output
    max_len_a: float = 1.2
    max_len_b: int = 10
    max_len: int | None = None  # e.g. the model's max_positions - 1; None for no cap

    def output_lens(self, src_pad_mask: Tensor) -> Tensor:
        """Per-sentence cap on output tokens before eos, as LongTensor [B]."""
        return self.caps((~src_pad_mask).sum(dim=1)).to(src_pad_mask.device)

    def caps(self, src_lens: Tensor) -> Tensor:
        """The cap on output tokens of sources of src_lens [B] tokens (eos included), on CPU."""
        src_len = src_lens.cpu().double()  # float64: truncates like int()
        caps = (self.max_len_a * src_len + self.max_len_b).long().clamp_(min=0)
        if self.max_len is not None:
            caps.clamp_(max=self.max_len)
        return caps


def length_penalty(length: int, lenpen: float) -> float:
    """GNMT length penalty ((5 + length) / 6) ** lenpen (Wu et al. 2016); length counts eos."""
    return float(((5 + length) / 6) ** lenpen)


class Stepper:
    """One search's decoder state, plus float32 buffers for the step logits and log-probs.

    The buffers are reused because rows only ever shrink: a fresh [N, V] tensor per step costs
    as much as the log-softmax itself on CPU (large allocations are fresh pages every time).
    """

    def __init__(
        self,
        model: IncrementalDecoder,
        state: IncrementalState,
        eos_id: int,
        rows_per_source: int = 1,
    ) -> None:
        self.model, self.state, self.eos_id = model, state, eos_id
        # rows per source the search wants; until the first step the state holds one per source
        self.pending_rows = rows_per_source
        self._bufs: tuple[Tensor, Tensor] | None = None

    def __call__(
        self,
        tokens: Tensor,
        at_max: Tensor | None,
        forced: Tensor | None = None,
        banned: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Run one decoder step on tokens [N] and return float32 log-probs [N, V].

        Rows flagged in ``at_max`` (bool [N]) may only emit eos. Like fairseq, eos keeps its own
        log-prob there, so a forced ending is still scored by the model. Rows whose ``forced``
        id [N] is >= 0 may only emit that token (a target prefix), also at its own log-prob.
        ``banned`` (rows [M], tokens [M]) are set to -inf first (repeated n-grams). The result
        is overwritten by the next call.
        """
        logits = self._first_step(tokens) if self.pending_rows > 1 else None
        if logits is None:
            logits = self.model.decode_step(tokens, self.state)  # [N, V]
        n = logits.size(0)
        if self._bufs is None or self._bufs[0].size(0) < n:
            buf = logits.new_empty(logits.shape, dtype=torch.float32)
            self._bufs = (buf, torch.empty_like(buf))
        # Cast into one reused buffer, then log-softmax into the other: log_softmax(dtype=...)
        # would allocate, and page in, a fresh fp32 copy of the logits every step. Contiguous
        # fp32 logits need no cast.
        logits32 = logits
        if logits.dtype != torch.float32 or not logits.is_contiguous():
            logits32 = self._bufs[0][:n].copy_(logits)  # [N, V], contiguous
        lprobs = torch.log_softmax(logits32, dim=-1, out=self._bufs[1][:n])
        if banned is not None:
            lprobs[banned] = _NEG_INF
        if at_max is not None:
            eos_lprobs = lprobs[:, self.eos_id].clone()  # [N]
            lprobs.masked_fill_(at_max.unsqueeze(1), _NEG_INF)
            lprobs[:, self.eos_id] = eos_lprobs
        if forced is not None:
            rows = (forced >= 0).nonzero().squeeze(1)  # [F]
            if rows.numel():
                kept = lprobs[rows, forced[rows]]  # [F]
                lprobs[rows] = _NEG_INF
                lprobs[rows, forced[rows]] = kept
        return lprobs

    def _first_step(self, tokens: Tensor) -> Tensor:
        """Beam search's first step, on tokens [B * K] that are all bos: the K rows of a source
        would all compute the same, so one row per source runs, and the state and the logits
        [B, V] are then repeated to K rows (``reorder`` with K slots of slot 0)."""
        k, self.pending_rows = self.pending_rows, 1
        logits = self.model.decode_step(tokens[::k], self.state)  # [B, V]
        sources = torch.arange(logits.size(0), device=tokens.device)
        self.state.reorder(sources, torch.zeros_like(sources).unsqueeze(1).expand(-1, k))
        return logits.repeat_interleave(k, dim=0)  # [B * K, V]


def start_search(
    model: IncrementalDecoder,
    src: Tensor,
    src_pad_mask: Tensor,
    limits: Limits,
    rows_per_source: int,
    prefix: Tensor | None = None,
    vocab: Tensor | None = None,
) -> tuple[Stepper, Tensor, int]:
    """Check the prefix against the length caps, encode the sources and start a decoder state
    of `rows_per_source` (K) rows per source (scoring only the ids in `vocab` [C], if given);
    the state holds one row per source until the stepper's first step repeats it.

    Returns the stepper, each sentence's cap on output tokens (LongTensor [B]) and the number
    of decoder steps the longest cap needs.
    """
    max_lens = limits.output_lens(src_pad_mask)
    check_prefix(prefix, max_lens)
    n_steps = int(max_lens.max()) + 1  # the last step can only emit eos
    memory = model.encode(src, src_pad_mask)
    state = model.init_state(memory, src_pad_mask, n_steps, rows_per_source=1, vocab=vocab)
    stepper = Stepper(model, state, limits.eos_id, rows_per_source)
    return stepper, max_lens, n_steps


def forced_at(prefix: Tensor | None, sources: Tensor, step: int) -> Tensor | None:
    """The prefix token each row must emit at `step` (-1: free) [N], or None past all prefixes.

    Args:
        prefix: Target prefix ids [B, P] of the input sentences, -1 after each one's end.
        sources: Input sentence of each decoder row [N].
    """
    if prefix is None or step >= prefix.size(1):
        return None
    return prefix[sources, step]


def repeat_bans(history: Tensor, n: int) -> tuple[Tensor, Tensor] | None:
    """(rows, tokens) that would repeat an n-gram of each row's history [N, t], or None.

    A token is banned when the row's last n - 1 tokens, followed by it, already occur.
    """
    if n <= 0 or history.size(1) < n:
        return None
    windows = history.unfold(1, n, 1)  # [N, t - n + 1, n]
    tail = history[:, history.size(1) - n + 1 :]  # [N, n - 1]
    match = (windows[:, :, : n - 1] == tail.unsqueeze(1)).all(dim=2)  # [N, W]
    rows, where = match.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return None
    return rows, windows[rows, where, n - 1]


def check_prefix(prefix: Tensor | None, max_lens: Tensor) -> None:
    """Refuse a prefix longer than its sentence's cap on output tokens."""
    if prefix is None:
        return
    lengths = (prefix >= 0).sum(dim=1)  # [B]
    too_long = (lengths > max_lens).nonzero().squeeze(1)
    if too_long.numel():
        i = int(too_long[0])
        raise ValueError(
            f"sentence {i}: its target prefix has {int(lengths[i])} tokens, more than the "
            f"{int(max_lens[i])} the length limits allow."
        )
