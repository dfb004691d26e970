"""The inference layout of a model: int8 weights, or the fp32 output projection laid out once
for oneDNN. Both are copies; the training model is never changed."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from mt.model.projection import Int8Rows, OneDNNRows
from mt.model.transformer import Seq2Seq


def onednn_layout(model: nn.Module) -> nn.Module:
    """A copy of `model` for fp32 decoding on CPU, sharing its parameters: each `Seq2Seq`'s
    output projection is `OneDNNRows`. Without oneDNN in this torch build, `model` itself."""
    if not torch.backends.mkldnn.is_available():
        return model
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    laid_out = copy.deepcopy(model, memo=shared)  # new modules, the same tensors
    for module in laid_out.modules():
        if isinstance(module, Seq2Seq) and module.decoder.embed.tokens.weight.device.type == "cpu":
            module.output_rows = OneDNNRows(module.decoder.embed.tokens.weight)
    return laid_out


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` whose nn.Linear layers and output projections run int8 (CPU inference).

    Weights are int8 with one scale per output row, as CTranslate2 keeps them: nn.Linear
    layers through the per-channel dynamic qconfig, and the tied output projection of each
    `Seq2Seq` (an embedding, not an nn.Linear) as `Int8Rows`. Activations are quantized per
    batch on the fly; attention stays fp32. This is torch's eager quantization API: deprecated
    in favour of torchao, but present and working in the torch this project pins, so its
    deprecation and quantized-tensor warnings are silenced here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear: qconfig})
    for module in quantized.modules():
        if isinstance(module, Seq2Seq):
            module.output_rows = Int8Rows(module.decoder.embed.tokens.weight)
    return quantized


def for_decoding(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """The model laid out for decoding in a resolved precision: int8 is `quantize_int8`, fp32 on
    CPU `onednn_layout` (both copies); otherwise `model` itself."""
    if precision == "int8":
        return quantize_int8(model)
    if precision == "fp32" and device.type == "cpu":
        return onednn_layout(model)
    return model
