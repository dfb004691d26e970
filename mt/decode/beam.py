"""Beam search: K live hypotheses per sentence, ranked, finished and pruned a step at a time.

Beam tensors are [B', K, ...]: sentence, then beam slot. The decoder state's rows are the same
grid flattened (``mt.model.DecoderState`` owns that layout); search only views it as [N, ...].
Each step is three small functions: rank the extensions (``_top_candidates``, with dynamic beam
allocation for lexical constraints), record the finished ones (``_finalize``), and keep the
best K live ones of the sentences still going (``_advance``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from mt.decode import constraints as lex
from mt.decode.blockwise import top_k
from mt.decode.constraints import Constraints, ConstraintState
from mt.decode.search import (
    Hypothesis,
    IncrementalDecoder,
    Limits,
    forced_at,
    length_penalty,
    repeat_bans,
    start_search,
)
from mt.decode.shortlist_space import inputs_to_shortlist

_NEG_INF = float("-inf")


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
    scores, index = top_k(flat, min(2 * beams.beam, flat.size(1)))  # [B', 2K]
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
    """The 2K candidates of dynamic beam allocation (``mt.decode.constraints``).

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
        model, src, src_pad_mask, limits: As in ``mt.decode.greedy.greedy_search``.
        beam: Number of live hypotheses per sentence, K.
        nbest: How many finished hypotheses to return per sentence, at most ``beam``.
        lenpen: Exponent of the GNMT length penalty; 0 ranks by raw log-prob, larger favours
            longer outputs.
        prefix: As in ``greedy_search``; while a sentence is inside its prefix, its one live
            hypothesis takes the forced token, and the beam opens after it.
        constraints: Phrases each output must contain (``mt.decode.constraints``); one that
            hits its length cap first ends anyway, ranked after those that are ``complete``.
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
    limits, prefix, constraints = inputs_to_shortlist(vocab, limits, prefix, constraints)
    stepper, max_lens, n_steps = start_search(model, src, src_pad_mask, limits, beam, prefix, vocab)
    first_cap = int(max_lens.min())
    beams = _init_beams(max_lens, beam, constraints)
    tokens = torch.full_like(beams.scores, limits.bos_id, dtype=torch.long)  # [B, K]
    finished: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    for step in range(n_steps):
        at_max = (beams.max_lens <= step).repeat_interleave(beam) if step >= first_cap else None
        forced = forced_at(prefix, beams.sent.repeat_interleave(beam), step)
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
