"""AdamW with parameter groups (no weight decay on norms, biases, embeddings) and the
linear-warmup + inverse-square-root learning-rate schedule of Vaswani et al. 2017."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices of linear layers decay, everything else (1-d tensors, embeddings)
    does not."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            is_matrix = isinstance(module, nn.Linear) and param.dim() == 2
            (decay if is_matrix else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    device: torch.device,
) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CUDA and CPU in recent PyTorch), else the foreach one."""
    groups = param_groups(model, weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


def inverse_sqrt(warmup_steps: int):
    """lr multiplier: linear warmup to 1 over `warmup_steps`, then sqrt(warmup / step)."""

    def factor(step: int) -> float:
        step = max(step, 1)
        if step < warmup_steps:
            return step / warmup_steps
        return math.sqrt(warmup_steps / step) if warmup_steps > 0 else 1.0

    return factor


def linear_decay(
    warmup_steps: int,
    total_steps: int,
    total_seconds: float = 0.0,
    clock: Callable[[], float] | None = None,
):
    """lr multiplier: linear warmup to 1, then linear decay to 0 at the end of the budget.

    For fixed budgets: ending at a learning rate near zero gives a better final model than the
    long tail of inverse-sqrt. The budget is `total_steps`, or, with `total_seconds` and a
    `clock` (training seconds so far), the steps that fit in that time at the pace so far if
    fewer: a run capped at N minutes then anneals by its last minute on a slow or busy machine
    too (at the price of bit-exact reproducibility, since the pace is measured). The pace
    counts start-up and validation pauses, so an early estimate can be pessimistic and the
    multiplier can rise a little again as the pace settles.
    """

    def factor(step: int) -> float:
        step = max(step, 1)
        if step < warmup_steps:
            return step / warmup_steps
        total = float(total_steps) if total_steps > 0 else math.inf
        elapsed = clock() if clock is not None and total_seconds > 0 else 0.0
        if elapsed > 0:
            total = min(total, step * total_seconds / elapsed)  # steps that fit at this pace
        if math.isinf(total):
            return 1.0
        return max(0.0, (total - step) / max(total - warmup_steps, 1.0))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    name: str = "inverse_sqrt",
    total_steps: int = 0,
    total_seconds: float = 0.0,
    clock: Callable[[], float] | None = None,
) -> LambdaLR:
    """inverse_sqrt (Vaswani et al. 2017) or linear (decays to 0 at the end of the budget:
    total_steps, or the steps that fit in total_seconds by `clock`, whichever is fewer)."""
    if name == "linear":
        return LambdaLR(optimizer, linear_decay(warmup_steps, total_steps, total_seconds, clock))
    return LambdaLR(optimizer, inverse_sqrt(warmup_steps))
