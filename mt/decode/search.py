"""Greedy, beam and sampling search over the incremental ``encode``/``decode_step`` interface.

Pure tensor code, no I/O: a model goes in, ranked :class:`Hypothesis` lists come out. Every search
takes the same :class:`Limits` (bos/eos ids, length caps). Rows of finished sentences leave the
decoder state (``state.reorder``), so later steps run on fewer rows.
Greedy and beam search take an optional output shortlist (``vocab``, ``mt.shortlist``): the model
then scores only those ids, search runs over their positions, and outputs are mapped back to ids.
Search runs under ``torch.no_grad``, not ``inference_mode``: autocast caches its bf16 copies of the
weights only outside inference mode, and without the cache every step casts every weight again.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from mt.decode import constraints as lex
from mt.decode.constraints import Constraints, ConstraintState

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


class _Stepper:
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


# --- one path per sentence: greedy and sampling ------------------------------------------------


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


def _pick_argmax(lprobs: Tensor) -> tuple[Tensor, Tensor]:
    """Most probable token of each row, the first on ties: tokens [N] and their log-probs [N]."""
    blocks = _blocks(lprobs, 1)
    if blocks is None:
        best, tokens = lprobs.max(dim=-1)
        return tokens, best
    block = blocks.amax(dim=2).argmax(dim=1)  # [N]: the first block that holds the maximum
    best, inner = blocks[torch.arange(blocks.size(0), device=block.device), block].max(dim=1)
    return block * _BLOCK + inner, best


def _topk(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
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


def _restrict(logits: Tensor, topk: int, topp: float) -> Tensor:
    """Set logits [N, V] outside the top-k tokens or the top-p nucleus to -inf."""
    if 0 < topk < logits.size(-1):
        kth = logits.topk(topk, dim=-1).values[:, -1:]  # [N, 1]
        logits = logits.masked_fill(logits < kth, _NEG_INF)
    if topp < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [N, V] each
        probs = sorted_logits.softmax(dim=-1)
        # drop a token once the more probable ones already cover topp (the best always stays)
        drop = probs.cumsum(dim=-1) - probs >= topp  # [N, V] in sorted order
        logits = logits.masked_fill(drop.scatter(1, order, drop), _NEG_INF)
    return logits


def _pick_sample(
    lprobs: Tensor, *, topk: int, topp: float, temperature: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Draw one token per row from the tempered, restricted distribution.

    Returns tokens [N] and their log-probs [N] under the model itself (no temperature or
    restriction), so hypotheses from all search functions are scored alike.
    """
    logits = _restrict(lprobs if temperature == 1.0 else lprobs / temperature, topk, topp)
    tokens = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)  # [N, 1]
    return tokens.squeeze(1), lprobs.gather(1, tokens).squeeze(1)


def _start(
    model: IncrementalDecoder,
    src: Tensor,
    src_pad_mask: Tensor,
    limits: Limits,
    beam: int,
    prefix: Tensor | None = None,
    vocab: Tensor | None = None,
) -> tuple[_Stepper, Tensor, int]:
    """Check the prefix against the length caps, encode the sources and start a decoder state
    of `beam` rows per source (scoring only the ids in `vocab` [C], if given); the state holds
    one row per source until the stepper's first step repeats it.

    Returns the stepper, each sentence's cap on output tokens (LongTensor [B]) and the number
    of decoder steps the longest cap needs.
    """
    max_lens = limits.output_lens(src_pad_mask)
    check_prefix(prefix, max_lens)
    n_steps = int(max_lens.max()) + 1  # the last step can only emit eos
    memory = model.encode(src, src_pad_mask)
    state = model.init_state(memory, src_pad_mask, n_steps, rows_per_source=1, vocab=vocab)
    return _Stepper(model, state, limits.eos_id, rows_per_source=beam), max_lens, n_steps


# --- output shortlist ----------------------------------------------------------------------------
# With ``vocab`` (sorted candidate ids [C]) search runs in shortlist space: every token it handles
# (bos/eos, prefix, constraints, n-gram history, the output seqs) is a position in ``vocab``; the
# model maps positions to ids before its embedding, and the finished outputs are mapped back.


def check_vocab(vocab: Tensor) -> None:
    """Refuse a shortlist that is not a sorted 1-D LongTensor of distinct ids."""
    if vocab.dim() != 1 or vocab.dtype != torch.long or vocab.numel() == 0:
        raise ValueError("a shortlist (vocab) must be a non-empty 1-D LongTensor of ids.")
    if vocab.numel() > 1 and not bool((vocab[1:] > vocab[:-1]).all()):
        raise ValueError("a shortlist (vocab) must be sorted ascending without repeats.")


def to_shortlist(vocab: Tensor, ids: Tensor, what: str) -> Tensor:
    """Positions in sorted `vocab` [C] of `ids` (any shape); -1 entries stay -1.

    Raises:
        ValueError: If an id (>= 0) is not in the shortlist, naming `what` it belongs to.
    """
    pos = torch.searchsorted(vocab, ids.clamp(min=0)).clamp_(max=vocab.numel() - 1)
    found = vocab[pos] == ids
    if not bool((found | (ids < 0)).all()):
        missing = int(ids[~found & (ids >= 0)][0])
        raise ValueError(f"the shortlist (vocab) lacks id {missing} of the {what}.")
    return torch.where(ids < 0, ids, pos)


def _shortlisted(
    vocab: Tensor | None, limits: Limits, prefix: Tensor | None, constraints: Constraints | None
) -> tuple[Limits, Tensor | None, Constraints | None]:
    """Limits, prefix and constraints in shortlist space (unchanged without a shortlist)."""
    if vocab is None:
        return limits, prefix, constraints
    check_vocab(vocab)
    specials = to_shortlist(
        vocab, torch.tensor([limits.bos_id, limits.eos_id]).to(vocab), "bos/eos"
    )
    limits = dataclasses.replace(limits, bos_id=int(specials[0]), eos_id=int(specials[1]))
    if prefix is not None:
        prefix = to_shortlist(vocab, prefix, "target prefix")
    if constraints is not None:
        tokens = to_shortlist(vocab, constraints.tokens, "constraints")
        constraints = dataclasses.replace(constraints, tokens=tokens)
    return limits, prefix, constraints


def _nbest(
    finished: list[list[Hypothesis]], nbest: int, vocab: Tensor | None
) -> list[list[Hypothesis]]:
    """The ``nbest`` best of each sentence's finished hypotheses, their shortlist positions
    mapped to ids."""
    best = [sorted(hyps, key=_ranking, reverse=True)[:nbest] for hyps in finished]
    if vocab is None:
        return best
    ids = vocab.tolist()
    return [
        [dataclasses.replace(h, tokens=[ids[t] for t in h.tokens]) for h in hyps] for hyps in best
    ]


def _forced_at(prefix: Tensor | None, sources: Tensor, step: int) -> Tensor | None:
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


def _decode_paths(
    model: IncrementalDecoder,
    src: Tensor,
    src_pad_mask: Tensor,
    limits: Limits,
    pick: Callable[[Tensor], tuple[Tensor, Tensor]],
    prefix: Tensor | None = None,
    no_repeat_ngram: int = 0,
    vocab: Tensor | None = None,
) -> list[Hypothesis]:
    """Extend one path per sentence until eos; finished rows leave the state.

    ``pick`` maps log-probs [N, V] to the chosen tokens [N] and their log-probs [N]; where a
    target prefix forces a token, it is the only one left to pick. With a shortlist ``vocab``
    [C], V is C and the outputs are mapped back to ids.
    """
    b, device = src.size(0), src.device
    if b == 0:
        return []
    limits, prefix, _ = _shortlisted(vocab, limits, prefix, None)
    eos_id = limits.eos_id
    stepper, max_lens, n_steps = _start(model, src, src_pad_mask, limits, 1, prefix, vocab)
    out = torch.full((b, n_steps), eos_id, dtype=torch.long, device=device)  # [B, T]
    lengths = torch.zeros(b, dtype=torch.long, device=device)  # [B], eos included
    logprobs = torch.zeros(b, device=device)  # [B]
    rows = torch.arange(b, device=device)  # [N] sentence of each live row
    tokens = torch.full((b,), limits.bos_id, dtype=torch.long, device=device)  # [N]
    first_cap = int(max_lens.min())
    for step in range(n_steps):
        at_max = max_lens[rows] <= step if step >= first_cap else None
        bans = repeat_bans(out[rows, :step], no_repeat_ngram)
        tokens, token_lprobs = pick(stepper(tokens, at_max, _forced_at(prefix, rows, step), bans))
        out[rows, step] = tokens
        logprobs.index_add_(0, rows, token_lprobs)
        done = tokens == eos_id  # [N]
        if done.any():
            lengths[rows[done]] = step + 1
            keep = (~done).nonzero().squeeze(1)  # [N']
            if keep.numel() == 0:
                break
            stepper.state.reorder(keep)
            rows, tokens = rows[keep], tokens[keep]
    if vocab is not None:
        out = vocab[out]  # shortlist positions -> ids
    return [
        Hypothesis(seq[: n - 1], lp / length_penalty(n, 1.0), lp)
        for seq, n, lp in zip(out.tolist(), lengths.tolist(), logprobs.tolist(), strict=True)
    ]


@torch.no_grad()
def greedy_search(
    model: IncrementalDecoder,
    src: Tensor,
    src_pad_mask: Tensor,
    limits: Limits,
    prefix: Tensor | None = None,
    no_repeat_ngram: int = 0,
    vocab: Tensor | None = None,
) -> list[Hypothesis]:
    """Translate by taking the most probable token at every step.

    Args:
        model: Anything with ``encode``, ``init_state`` and ``decode_step`` (in eval mode).
        src: Source ids [B, S].
        src_pad_mask: Bool [B, S], True at padding.
        limits: bos/eos ids and length caps.
        prefix: Target prefix ids [B, P], -1 after each sentence's prefix: every output starts
            with its prefix, scored as the model scores it (the output tokens include it).
        no_repeat_ngram: N > 0 never emits an n-gram of N tokens twice in one output.
        vocab: Output shortlist, sorted distinct ids [C] holding bos, eos and every prefix
            token: the model scores only these (logits [N, C]), so outputs hold only these
            ids and log-probs are normalized over them. None scores the whole vocabulary.

    Returns:
        One hypothesis per sentence, in input order. Scores use lenpen 1.0, the
        ``beam_search`` default, so ``beam_search(beam=1)`` gives the same hypotheses.

    Raises:
        ValueError: If ``vocab`` is not sorted or lacks bos, eos or a prefix token.
    """
    return _decode_paths(
        model, src, src_pad_mask, limits, _pick_argmax, prefix, no_repeat_ngram, vocab
    )


@torch.no_grad()
def sample(
    model: IncrementalDecoder,
    src: Tensor,
    src_pad_mask: Tensor,
    limits: Limits,
    *,
    topk: int = 0,
    topp: float = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    prefix: Tensor | None = None,
) -> list[Hypothesis]:
    """Translate by drawing every token from the model's (restricted) distribution.

    Args:
        model, src, src_pad_mask, limits: As in ``greedy_search``.
        topk: Draw only among the k most probable tokens; 0 keeps all.
        topp: Draw only from the smallest set of tokens whose probability reaches topp (nucleus).
        temperature: Divides the log-probs before restricting and drawing; below 1 is sharper.
        generator: Random source, for reproducible draws.
        prefix: As in ``greedy_search``.

    Returns:
        One hypothesis per sentence, in input order, scored by the untempered model log-probs
        with lenpen 1.0 (as ``greedy_search``).

    Raises:
        ValueError: If topk < 0, topp is outside (0, 1] or temperature <= 0.
    """
    if topk < 0 or not 0.0 < topp <= 1.0 or temperature <= 0.0:
        msg = f"got topk={topk}, topp={topp}, temperature={temperature}"
        raise ValueError(f"sample needs topk >= 0, 0 < topp <= 1 and temperature > 0, {msg}.")
    pick = functools.partial(
        _pick_sample, topk=topk, topp=topp, temperature=temperature, generator=generator
    )
    return _decode_paths(model, src, src_pad_mask, limits, pick, prefix)


# --- beam search ---------------------------------------------------------------------------------
# Beam tensors are [B', K, ...]: sentence, then beam slot. The decoder state's rows are the same
# grid flattened (``mt.model.DecoderState`` owns that layout); search only views it as [N, ...].


@dataclass
class _Beams:
    """The K live hypotheses of each of the B' unfinished sentences."""

    sent: Tensor  # [B'] input position of each live sentence
    max_lens: Tensor  # [B'] cap on output tokens before eos
    done: Tensor  # [B', K] scores of the K best finished hypotheses, best first; -inf: none
    seqs: Tensor  # [B', K, t] tokens emitted so far (no bos)
    scores: Tensor  # [B', K] cumulative log-probs
    met: ConstraintState | None = None  # [B', K] lexical constraints met, if any

    @property
    def beam(self) -> int:
        """K."""
        return self.scores.size(1)


@dataclass
class _Candidates:
    """Best 2K one-token extensions of each live sentence, best first; all [B', 2K]."""

    scores: Tensor  # cumulative log-probs
    beams: Tensor  # which of the sentence's K hypotheses is extended
    tokens: Tensor  # the appended token
    is_eos: Tensor  # tokens == eos
    met: ConstraintState | None = None  # constraints met after the token, if any
    complete: Tensor | None = None  # bool: every constraint met


def _init_beams(max_lens: Tensor, beam: int, constraints: Constraints | None) -> _Beams:
    """K identical hypotheses per sentence; only slot 0 may be extended at step 0."""
    b, device = max_lens.size(0), max_lens.device
    scores = torch.zeros(b, beam, device=device)  # [B, K]
    scores[:, 1:] = _NEG_INF  # otherwise step 0 would pick the same token K times
    return _Beams(
        sent=torch.arange(b, device=device),
        max_lens=max_lens,
        done=torch.full((b, beam), _NEG_INF, device=device),
        seqs=torch.empty(b, beam, 0, dtype=torch.long, device=device),
        scores=scores,
        met=None if constraints is None else ConstraintState.start(constraints, beam),
    )


def _top_candidates(
    beams: _Beams, lprobs: Tensor, eos_id: int, constraints: Constraints | None = None
) -> _Candidates:
    """Rank all extensions of each sentence's hypotheses, like fairseq ``BeamSearch.step``.

    Args:
        beams: Live hypotheses [B', K].
        lprobs: Next-token log-probs [B' * K, V]; overwritten with the cumulative scores.
        constraints: Lexical constraints of the input sentences; the candidates are then
            dealt out across banks of progress (``_constrained``).
    """
    vocab = lprobs.size(1)
    cumulative = lprobs.view(*beams.scores.shape, vocab).add_(beams.scores.unsqueeze(2))
    flat = cumulative.view(-1, beams.beam * vocab)  # [B', K, V] -> [B', K*V]
    # 2K: each hypothesis has one eos, so at least K candidates are not eos and can continue
    scores, index = _topk(flat, min(2 * beams.beam, flat.size(1)))  # [B', 2K]
    tokens = index % vocab
    if constraints is not None:
        return _constrained(beams, cumulative, index // vocab, tokens, constraints, eos_id)
    return _Candidates(scores, index // vocab, tokens, tokens == eos_id)


def _constrained(
    beams: _Beams,
    cumulative: Tensor,
    top_beams: Tensor,
    top_tokens: Tensor,
    constraints: Constraints,
    eos_id: int,
) -> _Candidates:
    """The 2K candidates of dynamic beam allocation (``mt.constraints``).

    To the best 2K extensions (``top_beams``, ``top_tokens`` [B', 2K]) it adds, per hypothesis,
    the tokens that advance its constraints and its own best token, then orders all of them
    bank by bank. Sentences without constraints keep exactly the plain ranking.
    """
    k, sent, vocab, top = beams.beam, beams.sent, cumulative.size(2), top_tokens.size(1)
    steer = lex.allowed(constraints, sent, beams.met)  # [B', K, C]
    extra = torch.cat([steer, cumulative.argmax(dim=2, keepdim=True)], dim=2)  # [B', K, C + 1]
    extra_beams = torch.arange(k, device=extra.device).repeat_interleave(extra.size(2))
    extra = extra.flatten(1)  # [B', X]
    tokens = torch.cat([top_tokens, extra.clamp(min=0)], dim=1)  # [B', M]
    parents = torch.cat([top_beams, extra_beams.expand_as(extra)], dim=1)
    key = parents * vocab + tokens
    scores = cumulative.flatten(1).gather(1, key)
    # an extra is void where it is no token, repeats an earlier candidate or has no constraint
    earlier = torch.ones(key.size(1), key.size(1), dtype=torch.bool, device=key.device).tril(-1)
    void = ((key.unsqueeze(2) == key.unsqueeze(1)) & earlier).any(dim=2)  # [B', M]
    void[:, top:] |= (extra < 0) | (constraints.totals[sent] == 0).unsqueeze(1)
    scores = scores.masked_fill(void, _NEG_INF)
    met = lex.advance(constraints, sent, beams.met, parents, tokens)
    progress = met.progress(constraints, sent)  # [B', M]
    order = lex.stripe_order(progress, scores, constraints.n_banks)[:, :top]
    rows = torch.arange(order.size(0), device=order.device)
    tokens = tokens.gather(1, order)
    return _Candidates(
        scores=scores.gather(1, order),
        beams=parents.gather(1, order),
        tokens=tokens,
        is_eos=tokens == eos_id,
        met=met.select(rows, order),
        complete=progress.gather(1, order) >= constraints.totals[sent].unsqueeze(1),
    )


def _finalize(
    beams: _Beams, cands: _Candidates, lenpen: float, finished: list[list[Hypothesis]]
) -> None:
    """Record eos candidates ranked in the top K as finished hypotheses.

    An eos ranked below K is dropped, as in fairseq: K better candidates exist. Appends to
    ``finished`` (indexed by input position) and keeps ``beams.done`` up to date.
    """
    k = beams.beam
    final = cands.is_eos[:, :k] & cands.scores[:, :k].isfinite()  # [B', K]
    if not final.any():
        return
    penalty = length_penalty(beams.seqs.size(2) + 1, lenpen)  # same length for all: t + eos
    new = torch.where(final, cands.scores[:, :k] / penalty, _NEG_INF)  # [B', K]
    beams.done = torch.cat([beams.done, new], dim=1).topk(k, dim=1).values
    sent_idx, cand_idx = final.nonzero(as_tuple=True)  # [F] each
    seqs = beams.seqs[sent_idx, cands.beams[sent_idx, cand_idx]].tolist()  # F x [t]
    sents, lps = beams.sent[sent_idx].tolist(), cands.scores[sent_idx, cand_idx].tolist()
    complete = (
        [True] * len(sents) if cands.complete is None else cands.complete[:, :k][final].tolist()
    )
    for s, seq, lp, ok in zip(sents, seqs, lps, complete, strict=True):
        finished[s].append(Hypothesis(seq, lp / penalty, lp, ok))


def _advance(
    beams: _Beams, cands: _Candidates, step: int, lenpen: float
) -> tuple[_Beams, Tensor, Tensor]:
    """Continue every unfinished sentence with its best K candidates that do not end in eos.

    A sentence leaves at its max length, or once its K best finished hypotheses all score at
    least what its best live one would score if it ended at the next step: Hugging Face's
    default rule (``early_stopping=False``). It is exact for lenpen 0, since log-probs only
    fall; with lenpen > 0 a longer ending divides by a larger penalty and could still win, so
    it is a heuristic there. fairseq stops at the first K finished instead, which can drop a
    far better live hypothesis when weak ones end early.

    Returns:
        The new beams; the sentences kept, as positions among the current ones [B'']; and the
        slot each new hypothesis extends [B'', K] (repeats allowed). Both go to
        ``state.reorder``; B'' is 0 when every sentence is done.
    """
    k, two_k = beams.beam, cands.scores.size(1)
    # eos candidates rank after all others, the rest keep their order (fairseq's trick)
    rank = cands.is_eos.long() * two_k + torch.arange(two_k, device=cands.scores.device)
    best_live = cands.scores.masked_fill(cands.is_eos, _NEG_INF).amax(dim=1)  # [B']
    reachable = best_live / length_penalty(step + 2, lenpen)  # t + 1 tokens and eos
    going = (beams.done[:, -1] < reachable) & (beams.max_lens > step)
    live = going.nonzero().squeeze(1)  # [B'']
    pick = rank[live].topk(k, dim=1, largest=False).indices  # [B'', K]
    slots = cands.beams[live].gather(1, pick)  # [B'', K]
    tokens = cands.tokens[live].gather(1, pick)  # [B'', K]
    kept = beams.seqs[live.unsqueeze(1), slots]  # [B'', K, t]
    new = _Beams(
        sent=beams.sent[live],
        max_lens=beams.max_lens[live],
        done=beams.done[live],
        seqs=torch.cat([kept, tokens.unsqueeze(2)], dim=2),  # [B'', K, t+1]
        scores=cands.scores[live].gather(1, pick),  # [B'', K]
        met=None if cands.met is None else cands.met.select(live, pick),
    )
    return new, live, slots


@torch.no_grad()
def beam_search(
    model: IncrementalDecoder,
    src: Tensor,
    src_pad_mask: Tensor,
    limits: Limits,
    *,
    beam: int,
    nbest: int = 1,
    lenpen: float = 1.0,
    prefix: Tensor | None = None,
    no_repeat_ngram: int = 0,
    constraints: Constraints | None = None,
    vocab: Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Translate a batch with beam search; the decoder runs on B' * K rows per step.

    A sentence is done at its max length (eos is forced) or once its ``beam`` best finished
    hypotheses outscore its best live one ended next step (``_advance``); its rows then leave.

    Args:
        model, src, src_pad_mask, limits: As in ``greedy_search``.
        beam: Number of live hypotheses per sentence, K.
        nbest: How many finished hypotheses to return per sentence, at most ``beam``.
        lenpen: Exponent of the GNMT length penalty; 0 ranks by raw log-prob, larger favours
            longer outputs.
        prefix: As in ``greedy_search``; while a sentence is inside its prefix, its one live
            hypothesis takes the forced token, and the beam opens after it.
        constraints: Phrases each output must contain (``mt.constraints``); one that hits its
            length cap first ends anyway, ranked after those that are ``complete``.
        no_repeat_ngram, vocab: As in ``greedy_search``; vocab holds the constraint ids too.

    Returns:
        Per sentence (input order), up to ``nbest`` hypotheses sorted by score, best first.

    Raises:
        ValueError: If not 1 <= nbest <= beam, or ``vocab`` lacks an id it must hold.
    """
    if not 1 <= nbest <= beam:
        raise ValueError(f"beam search needs 1 <= nbest <= beam, got nbest={nbest}, beam={beam}.")
    if src.size(0) == 0:
        return []
    limits, prefix, constraints = _shortlisted(vocab, limits, prefix, constraints)
    stepper, max_lens, n_steps = _start(model, src, src_pad_mask, limits, beam, prefix, vocab)
    first_cap = int(max_lens.min())
    beams = _init_beams(max_lens, beam, constraints)
    tokens = torch.full_like(beams.scores, limits.bos_id, dtype=torch.long)  # [B, K]
    finished: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    for step in range(n_steps):
        at_max = (beams.max_lens <= step).repeat_interleave(beam) if step >= first_cap else None
        forced = _forced_at(prefix, beams.sent.repeat_interleave(beam), step)
        bans = _beam_bans(beams, no_repeat_ngram, constraints, at_max, limits.eos_id)
        lprobs = stepper(tokens.reshape(-1), at_max, forced, bans)
        cands = _top_candidates(beams, lprobs, limits.eos_id, constraints)
        _finalize(beams, cands, lenpen, finished)
        beams, live, slots = _advance(beams, cands, step, lenpen)
        if live.numel() == 0:
            break
        stepper.state.reorder(live, slots)
        tokens = beams.seqs[:, :, -1]  # [B'', K]
    return _nbest(finished, nbest, vocab)


def _ranking(hyp: Hypothesis) -> tuple[bool, float]:
    """Sort key of finished hypotheses: those meeting their constraints first, then score."""
    return hyp.complete, hyp.score


def _beam_bans(
    beams: _Beams,
    no_repeat_ngram: int,
    constraints: Constraints | None,
    at_max: Tensor | None,
    eos_id: int,
) -> tuple[Tensor, Tensor] | None:
    """(rows, tokens) no live hypothesis may emit: repeated n-grams, and eos while a row's
    constraints are unmet (``Stepper`` applies them)."""
    bans = repeat_bans(beams.seqs.flatten(0, 1), no_repeat_ngram)
    if constraints is None:
        return bans
    rows = lex.unmet_rows(constraints, beams.sent, beams.met, at_max)
    if rows.numel() == 0:
        return bans
    eos = (rows, torch.full_like(rows, eos_id))
    return eos if bans is None else (torch.cat([bans[0], rows]), torch.cat([bans[1], eos[1]]))
