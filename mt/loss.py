"""Label-smoothed cross-entropy over the real (non-pad) target positions."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def select_targets(hidden: Tensor, tgt_out: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """Keep only the positions that carry a target token.

    Projecting to the vocabulary is the largest matmul of a small model and the log-softmax over
    [positions, V] is memory-bound, so padding is dropped before either runs.

    Args:
        hidden: decoder output, [B, T, D].
        tgt_out: target ids, [B, T], `pad_id` at padding.

    Returns:
        (hidden [N, D], targets [N]) with N the number of non-pad positions.
    """
    keep = tgt_out != pad_id  # [B, T]
    return hidden[keep], tgt_out[keep]


def label_smoothed_nll(logits: Tensor, target: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """Summed label-smoothed loss and summed plain NLL (for perplexity).

    The smoothed loss is (1 - eps) * nll + eps * mean over the vocabulary of -log p, as in
    Szegedy et al. 2016 / Vaswani et al. 2017; it is computed in float32 whatever the logits'
    dtype.

    Args:
        logits: [N, V] scores of the real target positions.
        target: [N] gold ids.
        epsilon: label smoothing, 0 disables it.

    Returns:
        (loss, nll), both summed over the N positions, float32 scalars.
    """
    lprobs = F.log_softmax(logits.float(), dim=-1)  # [N, V]
    nll = F.nll_loss(lprobs, target, reduction="sum")
    if epsilon == 0.0:
        return nll, nll.detach()
    smooth = -lprobs.mean(dim=-1).sum()
    return (1.0 - epsilon) * nll + epsilon * smooth, nll.detach()


class Seq2SeqLoss(nn.Module):
    """Teacher-forced loss of a Seq2Seq model, as one module so DDP sees a single forward."""

    def __init__(self, model: nn.Module, epsilon: float, pad_id: int) -> None:
        super().__init__()
        self.model, self.epsilon, self.pad_id = model, epsilon, pad_id

    def forward(
        self, src: Tensor, src_pad_mask: Tensor, tgt_in: Tensor, tgt_out: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Summed (label-smoothed loss, nll) over the real target tokens of a batch.

        Args:
            src: [B, S] source ids; src_pad_mask: [B, S], True at padding.
            tgt_in: [B, T] bos-shifted targets; tgt_out: [B, T] gold ids, pad at padding.
        """
        memory = self.model.encode(src, src_pad_mask)  # [B, S, D]
        hidden = self.model.decode(tgt_in, memory, src_pad_mask)  # [B, T, D]
        hidden, target = select_targets(hidden, tgt_out, self.pad_id)  # [N, D], [N]
        return label_smoothed_nll(self.model.project(hidden), target, self.epsilon)
