"""The attention kernels: the one place that computes softmax(q k^T / sqrt(Dh)) v.

Every attention of the model (training steps, incremental decoder steps, relative positions
and windows, through `mt.model.attention`) calls `attention`. It is
`F.scaled_dot_product_attention`, except for two CPU rules: a decoder step over cached keys
and values runs as two fp32 matmuls (`attention_by_matmul`) over fp32 caches
(`step_cache_dtype`), and bf16 training takes SDPA's math backend (`_slow_cpu_flash_backward`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel


def _slow_cpu_flash_backward(q: Tensor) -> bool:
    """True when SDPA would run CPU flash attention in bf16 with a backward pass to follow.

    The rule: bf16 training on CPU takes the math backend, because the CPU flash kernel's bf16
    backward is the slower one (`python scripts/bench_train.py --presets small --precisions
    bf16` measures the whole step). In fp32, and without a backward (decoding), flash stays.
    """
    return (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and q.requires_grad
        and torch.is_grad_enabled()
    )


def attention_by_matmul(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(Dh)) v as two fp32 batched matmuls, in the dtype SDPA would return.

    The rule: a decoder step on CPU (one query per row) takes this path, because there the flash
    kernel's per-call setup dominates and tiny bf16 batched matmuls are slower than fp32 ones
    (`python scripts/bench_attention.py` times the kernels). bf16 operands are exact in fp32, so
    this equals a bf16 kernel that accumulates in fp32. Caches stay fp32, never cast per step.
    """
    with torch.autocast("cpu", enabled=False):
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2))  # [B, H, T, S]
        scores.mul_(q.shape[-1] ** -0.5)
        if mask is not None:
            scores.masked_fill_(mask.logical_not(), float("-inf"))
        y = torch.matmul(torch.softmax(scores, dim=-1), v.float())  # [B, H, T, Dh]
    autocasting = torch.is_autocast_enabled("cpu")
    return y.to(torch.get_autocast_dtype("cpu") if autocasting else q.dtype)


def step_cache_dtype(k: Tensor) -> torch.dtype:
    """dtype to keep decoder-step K/V caches in: fp32 on CPU, where `attention_by_matmul`
    reads them in fp32 every step; the projections' own dtype elsewhere."""
    return torch.float32 if k.device.type == "cpu" else k.dtype


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    dropout_p: float,
    causal: bool,
    incremental: bool = False,
) -> Tensor:
    """F.scaled_dot_product_attention, with the CPU kernel choices of this module.

    Args:
        q: Queries [B, H, T, Dh].
        k: Keys [B, H, S, Dh].
        v: Values [B, H, S, Dh].
        mask: Bool, True = attend, broadcastable to [B, H, T, S]; or None.
        dropout_p: Attention dropout probability.
        causal: Use SDPA's implicit causal mask (T == S).
        incremental: A decoder step over cached keys and values (no dropout, no backward): on
            CPU it takes `attention_by_matmul`.

    Returns:
        Output [B, H, T, Dh].
    """
    sdpa = F.scaled_dot_product_attention
    if incremental and q.device.type == "cpu":
        return attention_by_matmul(q, k, v, mask)
    if _slow_cpu_flash_backward(q):
        with sdpa_kernel(SDPBackend.MATH):
            return sdpa(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
    return sdpa(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
