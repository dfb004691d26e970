"""Ensembles: several models of one vocabulary decode as one, averaging log-probabilities.

`Ensemble` has the incremental interface search needs (``encode`` / ``init_state`` /
``decode_step``); every member keeps its own memory and KV caches, and each step returns the
weighted mean of the members' log-probabilities (search renormalizes it with a log-softmax).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class EnsembleState:
    """The members' decoder states, reordered together."""

    def __init__(self, states: list) -> None:
        self.states = states

    def reorder(self, sources: Tensor, beams: Tensor | None = None) -> None:
        for state in self.states:
            state.reorder(sources, beams)


class Ensemble(nn.Module):
    """Models that share a vocabulary, combined at every decoding step.

    Args:
        models: Members, e.g. `mt.model.Seq2Seq` instances, in eval mode.
        weights: One weight per member (normalized to sum to 1); None weighs them equally.
    """

    def __init__(self, models: list[nn.Module], weights: list[float] | None = None) -> None:
        super().__init__()
        if weights is None:
            weights = [1.0] * len(models)
        if len(weights) != len(models) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"ensemble weights {weights} must be {len(models)} non-negative numbers, "
                "not all zero."
            )
        self.members = nn.ModuleList(models)
        self.weights = [w / sum(weights) for w in weights]

    def encode(self, src: Tensor, src_pad_mask: Tensor) -> list[Tensor]:
        """src [B, S] -> one memory [B, S, D_m] per member."""
        return [m.encode(src, src_pad_mask) for m in self.members]

    def init_state(
        self,
        memory: list[Tensor],
        src_pad_mask: Tensor,
        max_len: int,
        rows_per_source: int = 1,
        vocab: Tensor | None = None,
    ) -> EnsembleState:
        """One state per member; an ensemble scores the whole vocabulary (no shortlist)."""
        if vocab is not None:
            raise ValueError("an ensemble scores the whole vocabulary; it takes no shortlist.")
        members = zip(self.members, memory, strict=True)
        return EnsembleState(
            [m.init_state(mem, src_pad_mask, max_len, rows_per_source) for m, mem in members]
        )

    def decode_step(self, tokens: Tensor, state: EnsembleState) -> Tensor:
        """tokens [N] -> the weighted mean of the members' log-probs [N, V] (float32)."""
        out = None
        for model, member_state, weight in zip(
            self.members, state.states, self.weights, strict=True
        ):
            lprobs = F.log_softmax(model.decode_step(tokens, member_state).float(), dim=-1)
            out = lprobs.mul_(weight) if out is None else out.add_(lprobs, alpha=weight)
        assert out is not None
        return out
