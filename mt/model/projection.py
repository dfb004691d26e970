"""Inference layouts of the tied output projection, the largest matmul of a decoder step.

`Seq2Seq.output_rows` holds one of these when decoding lays the model out for it
(`mt.decode.layout`): `Int8Rows` for precision=int8, `OneDNNRows` for fp32 on CPU. Both project
hidden states onto the vocabulary, or onto a shortlist's rows (`rows`), with no autograd.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


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
            warnings.simplefilter("ignore")  # deprecation (see mt.decode.layout.quantize_int8)
            int8 = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
            self.fbgemm_weight = torch.ops.quantized.linear_prepack(int8, None)

    def rows(self, ids: Tensor) -> Int8Rows:
        """The projection onto `ids` [C] only: their rows, quantized with their own scales."""
        return Int8Rows(self.weight.index_select(0, ids), self.scales.index_select(0, ids))

    def __call__(self, hidden: Tensor) -> Tensor:
        """hidden [..., D] (fp32) -> [..., V] fp32."""
        return torch.ops.quantized.linear_dynamic(hidden, self.fbgemm_weight, True)  # reduce_range


class OneDNNRows:
    """A [V, D] projection weight in fp32, reordered once into oneDNN's blocked layout.

    For the tied output projection in fp32 CPU decoding, the largest matmul of a decoder step;
    `python scripts/bench_kernels.py` times it against `F.linear` over the row counts search
    uses. A shortlist's rows (`rows`) are reordered on their own. Inference only: no autograd.
    """

    def __init__(self, weight: Tensor) -> None:
        self.weight = weight.detach().float()
        self.onednn_weight = torch.ops.mkldnn._reorder_linear_weight(self.weight)

    def __deepcopy__(self, memo: dict) -> OneDNNRows:
        return self  # never changed after reordering, and oneDNN's tensor cannot be deep-copied

    def rows(self, ids: Tensor) -> OneDNNRows:
        """The projection onto `ids` [C] only."""
        return OneDNNRows(self.weight.index_select(0, ids))

    def __call__(self, hidden: Tensor) -> Tensor:
        """hidden [..., D] fp32 -> [..., V] fp32."""
        return torch.ops.mkldnn._linear_pointwise(hidden, self.onednn_weight, None, "none", [], "")
