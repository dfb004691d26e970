"""Label-smoothed cross-entropy over the real (non-pad) target positions.

The output projection and the loss run fused, a chunk of rows at a time, so the [N, V] logits,
their fp32 copy, the log-probs and their gradient never exist for the whole batch: on a small
model these are the largest tensors of a step and every pass over them goes to main memory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

# Rows per chunk: one chunk's fp32 logits take 8 MiB, e.g. 262 rows of an 8k vocabulary, so a
# chunk stays in cache on CPU; `python scripts/bench_train.py` measures chunked against not.
CHUNK_ELEMENTS = 2**21
# On a GPU, cache size matters less than the number of kernel launches: 128 MiB chunks.
GPU_CHUNK_ELEMENTS = 2**25
# Every chunk streams the whole [V, D] weight and its fp32 gradient through memory, whose cost
# does not shrink with the chunk: a chunk has at least MIN_ROWS rows, so that for a large
# vocabulary (an imported OPUS-MT's 58k) the GEMMs stay compute-bound rather than the cache
# rule cutting them to a few dozen rows. `python scripts/bench_loss.py` measures the rule.
MIN_ROWS = 512


def chunk_rows(vocab: int, device: torch.device) -> int:
    """Rows of the fused loss's chunks for a `vocab`-sized projection on `device`: as many as
    fill the cache budget (CHUNK_ELEMENTS on CPU, GPU_CHUNK_ELEMENTS on a GPU), MIN_ROWS at
    least."""
    budget = CHUNK_ELEMENTS if device.type == "cpu" else GPU_CHUNK_ELEMENTS
    return max(MIN_ROWS, budget // vocab)


def select_targets(hidden: Tensor, tgt_out: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """Keep only the positions that carry a target token.

    Args:
        hidden: decoder output, [B, T, D].
        tgt_out: target ids, [B, T], `pad_id` at padding.

    Returns:
        (hidden [N, D], targets [N]) with N the number of non-pad positions.
    """
    keep = tgt_out != pad_id  # [B, T]
    return hidden[keep], tgt_out[keep]


def _operands(hidden: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, torch.dtype | None]:
    """The projection's GEMM operands as autocast would pass them, and the dtype gradients are
    rounded to before their GEMMs (None: fp32, no rounding).
    """
    device = hidden.device.type
    if not torch.is_autocast_enabled(device):
        return hidden, weight, None
    low = torch.get_autocast_dtype(device)
    return hidden.to(low), weight.to(low), low


class _ProjectedSmoothedNLL(torch.autograd.Function):
    """hidden [N, D] @ weight [V, D]^T -> summed label-smoothed NLL and summed NLL.

    Both losses are sums, so their gradients are known up to the incoming scalar: forward works
    them out chunk by chunk (d loss / d logits = softmax - (1 - eps) onehot - eps / V) and
    backward only scales them. Logits are cast to fp32 before the softmax, as the unfused loss
    did; GEMM operands keep the autocast dtype.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        target: Tensor,
        epsilon: float,
        grad_mode: bool,
        bias: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        h, w, low = _operands(hidden, weight)
        n = h.shape[0]
        # smoothing spreads eps over the ids the model can emit: all, or those of finite bias
        emit = None if bias is None else torch.isfinite(bias).float()  # [V]
        vocab = w.shape[0] if emit is None else int(emit.sum())
        rows = chunk_rows(w.shape[0], h.device)
        # needs_input_grad ignores no_grad (e.g. validation): the caller passes the grad mode
        want_grad = grad_mode and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        grad_dtype = torch.float32 if low == torch.float16 else h.dtype
        grad_h = torch.empty_like(h, dtype=grad_dtype) if want_grad else None  # [N, D]
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if want_grad else None
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        nll = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            for start in range(0, n, rows):
                end = start + rows
                h_c, t_c = h[start:end], target[start:end, None]  # [C, D], [C, 1]
                logits = (h_c @ w.T).float()  # [C, V]
                if bias is not None:
                    logits += bias
                lprobs = torch.log_softmax(logits, dim=-1)  # [C, V]
                nll_c = -lprobs.gather(1, t_c).sum()
                nll += nll_c
                spread = lprobs.sum() if emit is None else lprobs.nan_to_num(neginf=0.0).sum()
                loss += (1.0 - epsilon) * nll_c - epsilon / vocab * spread
                if grad_h is None or grad_w is None:
                    continue
                grad = lprobs.exp_()  # softmax, 0 at the ids never emitted
                grad.sub_(epsilon / vocab if emit is None else emit * (epsilon / vocab))
                grad.scatter_add_(1, t_c, grad.new_full(t_c.shape, epsilon - 1.0))
                if low == torch.float16:  # unscaled small gradients would underflow in fp16
                    torch.mm(grad, w.float(), out=grad_h[start:end])
                    grad_w += grad.T @ h_c.float()
                    continue
                if low is not None:
                    grad = grad.to(low)
                torch.mm(grad, w, out=grad_h[start:end])
                grad_w += grad.T @ h_c
        ctx.save_for_backward(grad_h, grad_w)
        ctx.hidden_dtype = hidden.dtype
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, _grad_nll: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        if grad_h is None:
            return None, None, None, None, None, None
        return grad_h.to(ctx.hidden_dtype) * grad_loss, grad_w * grad_loss, None, None, None, None


def projected_label_smoothed_nll(
    hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float, bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Summed label-smoothed loss and summed plain NLL (for perplexity) of `hidden @ weight.T`
    (+ bias).

    The smoothed loss is (1 - eps) * nll + eps * mean over the vocabulary of -log p, as in
    Szegedy et al. 2016 / Vaswani et al. 2017; log-probs are float32 whatever the GEMM dtype.
    With a bias (an imported model's fixed output bias, no gradient), ids of -inf bias are
    never emitted: the mean runs over the others.

    Args:
        hidden: [N, D] decoder states of the real target positions.
        weight: [V, D] output projection (the tied target embedding).
        target: [N] gold ids.
        epsilon: label smoothing, 0 disables it.
        bias: [V] fixed output bias (`Seq2Seq.output_bias`), or None.

    Returns:
        (loss, nll), both summed over the N positions, float32 scalars; nll carries no gradient.
    """
    grad_mode = torch.is_grad_enabled()
    bias = None if bias is None else bias.detach().float()
    loss, nll = _ProjectedSmoothedNLL.apply(hidden, weight, target, epsilon, grad_mode, bias)
    return loss, nll


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
        weight = self.model.decoder.embed.tokens.weight  # [V, D], tied output projection
        bias = self.model.output_bias  # [V] or None
        return projected_label_smoothed_nll(hidden, weight, target, self.epsilon, bias)
