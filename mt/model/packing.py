"""Packed token layout: real (non-pad) tokens of a padded [B, L] batch stored as rows [N, ...].

Position-wise work (embeddings, linears, norms, dropout) runs on the N real tokens only; attention
unpacks to the padded [B, L, ...] grid that SDPA needs and packs its output back.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Packing:
    """Map between a padded [B, L] grid and its N real tokens, in row-major order.

    With no padding the index is None and pack/unpack are free reshapes.

    Args:
        batch: B.
        length: L.
        index: Flat grid positions of the real tokens, LongTensor [N]; None when all are real.
        device: Device of the batch.
    """

    def __init__(self, batch: int, length: int, index: Tensor | None, device: torch.device) -> None:
        self.batch = batch
        self.length = length
        self.index = index
        self.device = device

    @classmethod
    def from_pad_mask(cls, pad_mask: Tensor) -> Packing:
        """Layout of a batch with bool pad_mask [B, L] (True at padding)."""
        batch, length = pad_mask.shape
        index = None
        # The host sync of .any() is repaid by skipping gathers/scatters for unpadded batches.
        if bool(pad_mask.any()):
            index = (~pad_mask).flatten().nonzero().squeeze(1)  # [B, L] -> [N]
        return cls(batch, length, index, pad_mask.device)

    @classmethod
    def dense(cls, batch: int, length: int, device: torch.device) -> Packing:
        """Layout of a batch without padding (e.g. one decode step: B rows, L = 1)."""
        return cls(batch, length, None, device)

    @property
    def n_tokens(self) -> int:
        """Number of real tokens N."""
        return self.batch * self.length if self.index is None else self.index.shape[0]

    def positions(self) -> Tensor:
        """Position of each real token within its sequence -> LongTensor [N]."""
        if self.index is None:
            return torch.arange(self.length, device=self.device).repeat(self.batch)
        return self.index % self.length

    def pack(self, x: Tensor) -> Tensor:
        """Padded [B, L, *C] -> packed [N, *C] (keeps only real tokens)."""
        flat = x.flatten(0, 1)  # [B, L, *C] -> [B * L, *C]
        return flat if self.index is None else flat.index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """Packed [N, C] -> padded [B, L, C] with zeros at padding.

        Zeros (not garbage) because padded keys/values still enter masked SDPA products,
        where a NaN would poison the whole row.
        """
        if self.index is not None:
            grid = x.new_zeros(self.batch * self.length, x.shape[1])
            x = grid.index_copy_(0, self.index, x)  # [B * L, C]
        return x.view(self.batch, self.length, x.shape[1])  # [B * L, C] -> [B, L, C]
