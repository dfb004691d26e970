"""Search in an output shortlist's space: ids as positions in the shortlist, and back.

With ``vocab`` (sorted candidate ids [C], ``mt.decode.shortlist``) greedy and beam search run in
shortlist space: every token they handle (bos/eos, prefix, constraints, n-gram history, the
output seqs) is a position in ``vocab``; the model maps positions to ids before its embedding,
and the finished outputs are mapped back to ids.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from mt.decode.constraints import Constraints
from mt.decode.search import Limits


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


def inputs_to_shortlist(
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
