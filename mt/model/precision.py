"""CPU precision and kernel choices for attention: which SDPA backend, and when to skip SDPA.

Decoder steps on CPU run as two fp32 matmuls (`_attention_by_matmul`) over fp32 K/V caches
(`step_cache_dtype`); CPU bf16 training takes SDPA's math backend (`_slow_cpu_flash_backward`).
Everywhere else `attention` is plain `F.scaled_dot_product_attention`. Linear layers are plain
`nn.Linear`: CPU bf16 needs native bf16 matmuls, which `mt.runtime.pick_precision` checks.
`quantize_int8` is precision=int8: int8 weights for the linear layers and the output projection;
`pack_for_cpu` lays the fp32 output projection out once for oneDNN (`PackedRows`).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
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


class Int8Rows:
    """A [V, D] projection weight in int8 with one scale per row, applied by fbgemm's dynamic
    int8 linear (activations quantized per call, as in torch's quantized nn.Linear).

    For the tied output projection, which is an embedding rather than an nn.Linear and so is
    left alone by `quantize_dynamic`. Per-row scales keep rare pieces' small rows exact to 1/127
    of their own range; a shortlist's rows (`rows`) are the same int8 values and scales.
    """

    def __init__(self, weight: Tensor, scales: Tensor | None = None) -> None:
        weight = weight.detach().float()
        if scales is None:
            scales = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
        self.weight, self.scales = weight, scales
        zeros = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized-tensor deprecation (see quantize_int8)
            packed = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(packed, None)

    def rows(self, ids: Tensor) -> Int8Rows:
        """The projection onto `ids` [C] only: their rows, quantized with their own scales."""
        return Int8Rows(self.weight.index_select(0, ids), self.scales.index_select(0, ids))

    def __call__(self, hidden: Tensor) -> Tensor:
        """hidden [..., D] (fp32) -> [..., V] fp32."""
        return torch.ops.quantized.linear_dynamic(hidden, self.packed, True)  # reduce_range


class PackedRows:
    """A [V, D] projection weight in fp32, reordered once into oneDNN's blocked layout.

    For the tied output projection in fp32 CPU decoding, the largest matmul of a decoder step;
    `python scripts/bench_kernels.py` times it against `F.linear` over the row counts search
    uses. A shortlist's rows (`rows`) are packed on their own. Inference only: no autograd.
    """

    def __init__(self, weight: Tensor) -> None:
        self.weight = weight.detach().float()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight)

    def __deepcopy__(self, memo: dict) -> PackedRows:
        return self  # never changed after packing, and oneDNN's tensor cannot be deep-copied

    def rows(self, ids: Tensor) -> PackedRows:
        """The projection onto `ids` [C] only."""
        return PackedRows(self.weight.index_select(0, ids))

    def __call__(self, hidden: Tensor) -> Tensor:
        """hidden [..., D] fp32 -> [..., V] fp32."""
        return torch.ops.mkldnn._linear_pointwise(hidden, self.packed, None, "none", [], "")


def pack_for_cpu(model: nn.Module) -> nn.Module:
    """A copy of `model` for fp32 decoding on CPU, sharing its parameters: each `Seq2Seq`'s
    output projection is `PackedRows`. Without oneDNN in this torch build, `model` itself."""
    from mt.model.transformer import Seq2Seq  # the model module imports this one

    if not torch.backends.mkldnn.is_available():
        return model
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    packed = copy.deepcopy(model, memo=shared)  # new modules, the same tensors
    for module in packed.modules():
        if isinstance(module, Seq2Seq) and module.decoder.embed.tokens.weight.device.type == "cpu":
            module.packed_output = PackedRows(module.decoder.embed.tokens.weight)
    return packed


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` whose nn.Linear layers and output projections run int8 (CPU inference).

    Weights are int8 with one scale per output row, as CTranslate2 keeps them: nn.Linear
    layers through the per-channel dynamic qconfig, and the tied output projection of each
    `Seq2Seq` (an embedding, not an nn.Linear) as `Int8Rows`. Activations are quantized per
    batch on the fly; attention stays fp32. This is torch's eager quantization API: deprecated
    in favour of torchao, but present and working in the torch this project pins, so its
    deprecation and quantized-tensor warnings are silenced here.
    """
    from mt.model.transformer import Seq2Seq  # the model module imports this one

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear: qconfig})
    for module in quantized.modules():
        if isinstance(module, Seq2Seq):
            module.packed_output = Int8Rows(module.decoder.embed.tokens.weight)
    return quantized


def for_decoding(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """The model laid out for decoding in a resolved precision: int8 is `quantize_int8`, fp32 on
    CPU `pack_for_cpu` (both copies); otherwise `model` itself."""
    if precision == "int8":
        return quantize_int8(model)
    if precision == "fp32" and device.type == "cpu":
        return pack_for_cpu(model)
    return model


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
