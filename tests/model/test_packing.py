"""Packing: pack/unpack round trip, zeros at padding, positions, free path without padding."""

import torch

from mt.model.packing import Packing

PAD_MASK = torch.tensor([[0, 0, 0, 1], [0, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)


def test_pack_keeps_real_tokens_in_row_major_order() -> None:
    packing = Packing.from_pad_mask(PAD_MASK)
    ids = torch.arange(12).view(3, 4)
    assert packing.pack(ids).tolist() == [0, 1, 2, 4, 8, 9, 10, 11]
    assert packing.n_tokens == 8
    assert packing.positions().tolist() == [0, 1, 2, 0, 0, 1, 2, 3]


def test_unpack_inverts_pack_and_zeroes_padding() -> None:
    packing = Packing.from_pad_mask(PAD_MASK)
    x = torch.randn(3, 4, 5)
    grid = packing.unpack(packing.pack(x))
    assert grid.shape == (3, 4, 5)
    torch.testing.assert_close(grid[~PAD_MASK], x[~PAD_MASK], rtol=0, atol=0)
    assert torch.all(grid[PAD_MASK] == 0)


def test_unpack_gradient_reaches_only_real_tokens() -> None:
    packing = Packing.from_pad_mask(PAD_MASK)
    x = torch.randn(8, 5, requires_grad=True)
    packing.unpack(x).sum().backward()
    assert torch.all(x.grad == 1)


def test_no_padding_is_a_free_reshape() -> None:
    packing = Packing.from_pad_mask(torch.zeros(2, 3, dtype=torch.bool))
    assert packing.index is None
    x = torch.randn(2, 3, 4)
    assert packing.pack(x).data_ptr() == x.data_ptr()
    assert packing.unpack(packing.pack(x)).data_ptr() == x.data_ptr()
    assert packing.positions().tolist() == [0, 1, 2, 0, 1, 2]
