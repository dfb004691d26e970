"""CPU precision and kernel choices for attention: which SDPA backend, and when to skip SDPA.

Decoder steps on CPU run as two fp32 matmuls (`_attention_by_matmul`) over fp32 K/V caches
(`step_cache_dtype`); CPU bf16 training takes SDPA's math backend (`_slow_cpu_flash_backward`).
Everywhere else `attention` is plain `F.scaled_dot_product_attention`. Linear layers are plain
`nn.Linear`: CPU bf16 needs native bf16 matmuls, which `mt.runtime.pick_precision` checks.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def _slow_cpu_flash_backward(q: Tensor) -> bool:
    """True when SDPA would run CPU flash attention in bf16 with a backward pass to follow.

    The CPU flash kernel's bf16 backward is slow: on a 2-core AVX512-BF16 CPU, training the
    `small` model reached 2,727 target tok/s with it and 3,129 with the math backend on the
    same batches (`python scripts/bench_train.py --presets small --precisions bf16` shows the
    whole step). In fp32, and without a backward (decoding), flash stays the faster choice.
    """
    return (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and q.requires_grad
        and torch.is_grad_enabled()
    )


def _attention_by_matmul(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(Dh)) v as two fp32 batched matmuls, in the dtype SDPA would return.

    For a decoder step on CPU this beats every SDPA kernel: with one query per row, the flash
    kernel's per-call setup dominates, and tiny bf16 batched matmuls are slower than fp32 ones
    (64 rows x 4 heads over 24 keys, 2-core AVX512-BF16 CPU: flash 375 us in bf16 and 130 us in
    fp32; q k^T 71 us in bf16 and 29 us in fp32). bf16 operands are exact in fp32, so this equals
    a bf16 kernel that accumulates in fp32. Keep caches fp32 to avoid casting them every step.
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
    """dtype to keep decoder-step K/V caches in: fp32 on CPU, where `_attention_by_matmul`
    reads them in fp32 every step; the projections' own dtype elsewhere."""
    return torch.float32 if k.device.type == "cpu" else k.dtype


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` whose nn.Linear layers run dynamic int8 quantization (CPU inference).

    Weights are int8 with one scale per tensor (the default dynamic qconfig); activations are
    quantized per batch on the fly; the output projection (tied to the embedding, not an
    nn.Linear) and attention stay fp32. This is torch's eager quantization API: deprecated in
    favour of torchao, but present and working in the torch this project pins, so its
    deprecation and quantized-tensor warnings are silenced here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    dropout_p: float,
    causal: bool,
    incremental: bool = False,
) -> Tensor:
    """F.scaled_dot_product_attention, with the CPU kernel choices above.

    Args:
        q: Queries [B, H, T, Dh].
        k: Keys [B, H, S, Dh].
        v: Values [B, H, S, Dh].
        mask: Bool, True = attend, broadcastable to [B, H, T, S]; or None.
        dropout_p: Attention dropout probability.
        causal: Use SDPA's implicit causal mask (T == S).
        incremental: A decoder step over cached keys and values (no dropout, no backward): on
            CPU it takes `_attention_by_matmul`.

    Returns:
        Output [B, H, T, Dh].
    """
    sdpa = F.scaled_dot_product_attention
    if incremental and q.device.type == "cpu":
        return _attention_by_matmul(q, k, v, mask)
    if _slow_cpu_flash_backward(q):
        with sdpa_kernel(SDPBackend.MATH):
            return sdpa(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
    return sdpa(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
