"""Lexical constraints for beam search: target phrases every output must contain, in any order.

Dynamic beam allocation (Post & Vilar 2018), vectorized as in Hu et al. (2019) and fairseq's
``--constraints``: besides the usual best extensions, each hypothesis is offered the tokens that
advance its constraints and its own best token; the beam's K slots are then dealt out across
banks of hypotheses by how many constraint tokens they have met, best of each bank first, so
the beam size stays fixed. eos is allowed only once every constraint is met (or the output is at
its length cap).

Pure tensor code. A hypothesis tracks, per constraint, whether it is met, and at most one phrase
in progress: the next token either continues that phrase or drops its progress, as in Sockeye.
Tensors are [B', K, ...] (sentence, beam slot) like the beams in ``mt.decode.beam``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Constraints:
    """The phrases each input sentence's outputs must contain.

    tokens: [B, C, L] phrase ids, -1 after each phrase's end; lens: [B, C] phrase lengths, 0 for
    a sentence with fewer than C phrases.
    """

    tokens: Tensor
    lens: Tensor

    @classmethod
    def from_lists(cls, phrases: list[list[list[int]]], device: torch.device | None = None):
        """From each sentence's list of phrases (token ids); None when no sentence has one."""
        phrases = [[p for p in sent if p] for sent in phrases]
        c = max((len(sent) for sent in phrases), default=0)
        if c == 0:
            return None
        width = max(len(p) for sent in phrases for p in sent)
        tokens = torch.full((len(phrases), c, width), -1, dtype=torch.long)
        lens = torch.zeros(len(phrases), c, dtype=torch.long)
        for b, sent in enumerate(phrases):
            for i, phrase in enumerate(sent):
                tokens[b, i, : len(phrase)] = torch.tensor(phrase, dtype=torch.long)
                lens[b, i] = len(phrase)
        return cls(tokens.to(device), lens.to(device))

    @property
    def totals(self) -> Tensor:
        """Constraint tokens of each sentence [B]: the progress of a hypothesis that met all."""
        return self.lens.sum(dim=1)

    @property
    def n_banks(self) -> int:
        """Banks of hypotheses by progress, 0..max total."""
        return int(self.totals.max()) + 1


@dataclass
class ConstraintState:
    """What each hypothesis [B', M] has met: met [B', M, C]; the phrase in progress (-1: none)
    and how many of its tokens were matched, cur and pos [B', M]."""

    met: Tensor
    cur: Tensor
    pos: Tensor

    @classmethod
    def start(cls, cons: Constraints, beam: int) -> ConstraintState:
        """Nothing met, for K hypotheses of every sentence."""
        b, c = cons.lens.shape
        zeros = torch.zeros(b, beam, dtype=torch.long, device=cons.lens.device)
        return cls(zeros.unsqueeze(2).expand(b, beam, c).bool(), zeros - 1, zeros)

    def select(self, sentences: Tensor, slots: Tensor) -> ConstraintState:
        """The states of ``slots`` [B'', K'] of the kept ``sentences`` [B'']."""
        rows = sentences.unsqueeze(1)
        return ConstraintState(self.met[rows, slots], self.cur[rows, slots], self.pos[rows, slots])

    def progress(self, cons: Constraints, sent: Tensor) -> Tensor:
        """Constraint tokens met so far [B', M], counting the phrase in progress."""
        done = (self.met * cons.lens[sent].unsqueeze(1)).sum(dim=2)
        return done + self.pos


def allowed(cons: Constraints, sent: Tensor, state: ConstraintState) -> Tensor:
    """The tokens that advance each hypothesis's constraints [B', K, C], -1 for none.

    Inside a phrase, only its next token; otherwise the first token of every unmet phrase.
    """
    tokens, lens = cons.tokens[sent], cons.lens[sent]  # [B', C, L], [B', C]
    width = tokens.size(2)
    starts = tokens[:, :, 0].unsqueeze(1).expand(*state.met.shape)  # [B', K, C]
    starts = starts.masked_fill(state.met | (lens == 0).unsqueeze(1), -1)
    index = state.cur.clamp(min=0) * width + state.pos.clamp(max=width - 1)  # [B', K]
    following = tokens.flatten(1).gather(1, index)  # [B', K]
    inside = torch.full_like(starts, -1)
    inside[:, :, 0] = following
    return torch.where((state.cur >= 0).unsqueeze(2), inside, starts)


def advance(
    cons: Constraints, sent: Tensor, state: ConstraintState, parents: Tensor, tokens: Tensor
) -> ConstraintState:
    """The state after hypothesis ``parents`` [B', M] (slots of ``state``) emits ``tokens``."""
    phrases, lens = cons.tokens[sent], cons.lens[sent]  # [B', C, L], [B', C]
    c, width = lens.size(1), phrases.size(2)
    met = state.met.gather(1, parents.unsqueeze(2).expand(-1, -1, c))  # [B', M, C]
    cur, pos = state.cur.gather(1, parents), state.pos.gather(1, parents)  # [B', M]
    cur0 = cur.clamp(min=0)
    expected = phrases.flatten(1).gather(1, cur0 * width + pos.clamp(max=width - 1))
    follows = (cur >= 0) & (tokens == expected)  # [B', M] continues its phrase
    pos = torch.where(follows, pos + 1, 0)
    completes = follows & (pos == lens.gather(1, cur0))
    met = met | (F.one_hot(cur0, c).bool() & completes.unsqueeze(2))
    cur = torch.where(follows & ~completes, cur, -1)
    pos = torch.where(follows & ~completes, pos, 0)
    # a token that does not continue a phrase may start one: the first unmet phrase it begins
    begins = (phrases[:, :, 0].unsqueeze(1) == tokens.unsqueeze(2)) & ~met  # [B', M, C]
    begins &= (lens > 0).unsqueeze(1) & ~follows.unsqueeze(2)
    first = begins.long().argmax(dim=2)  # [B', M]
    starts = begins.any(dim=2)
    single = starts & (lens.gather(1, first) == 1)
    met = met | (F.one_hot(first, c).bool() & single.unsqueeze(2))
    cur = torch.where(starts & ~single, first, cur)
    pos = torch.where(starts & ~single, 1, pos)
    return ConstraintState(met, cur, pos)


def stripe_order(progress: Tensor, scores: Tensor, n_banks: int) -> Tensor:
    """Candidate order [B', M] that deals the beam out across banks of equal progress.

    The best candidate of every bank comes first (most progress first), then the second best of
    every bank, and so on; a bank that runs out leaves its turns to the others. Candidates
    scoring -inf come last.
    """
    m = scores.size(1)
    by_score = scores.argsort(dim=1, descending=True, stable=True)  # [B', M]
    bank = progress.gather(1, by_score)
    one_hot = F.one_hot(bank, n_banks)  # [B', M, n_banks]
    rank_in_bank = (one_hot.cumsum(dim=1) * one_hot).sum(dim=2) - 1  # [B', M]
    key = rank_in_bank * n_banks + (n_banks - 1 - bank)
    key = key.masked_fill(~scores.gather(1, by_score).isfinite(), m * n_banks)
    return by_score.gather(1, key.argsort(dim=1, stable=True))


def unmet_rows(
    cons: Constraints, sent: Tensor, state: ConstraintState, at_max: Tensor | None
) -> Tensor:
    """Decoder rows [R] (flattened [B' * K]) that may not end yet: constraints still unmet and
    not at their length cap, where eos is forced whatever is met."""
    short = state.progress(cons, sent) < cons.totals[sent].unsqueeze(1)  # [B', K]
    short = short.flatten()
    if at_max is not None:
        short &= ~at_max
    return short.nonzero().squeeze(1)


def contains(tokens: list[int], phrase: list[int]) -> bool:
    """Whether the output ``tokens`` hold ``phrase`` as a contiguous run."""
    n = len(phrase)
    return any(tokens[i : i + n] == phrase for i in range(len(tokens) - n + 1))
