"""Layers: dropout statistics, sinusoidal table, pre/post-norm layer wiring."""

import math

import pytest
import torch

from mt.model.layers import (
    Embeddings,
    EncoderLayer,
    SinusoidalPositions,
    dropout,
    sinusoidal_table,
)
from mt.model.packing import Packing


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_dropout_drops_a_fraction_p_and_preserves_the_mean(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = dropout(x, p, training=True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-4, atol=0)


def test_dropout_is_identity_in_eval_or_at_zero() -> None:
    x = torch.randn(10, 4)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0, training=True) is x


def test_dropout_masks_differ_across_calls_and_elements() -> None:
    x = torch.ones(4, 1000)
    a, b = dropout(x, 0.5, True), dropout(x, 0.5, True)
    assert not torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # the 16-bit slices of one random word are independent


def test_dropout_gradient_uses_the_same_mask() -> None:
    x = torch.randn(1000, requires_grad=True)
    y = dropout(x, 0.2, True)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.8, atol=1e-4, rtol=0)


def test_sinusoidal_table_matches_the_paper() -> None:
    table = sinusoidal_table(50, 8)
    pos, i = 7, 2  # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)
    angle = pos / 10000 ** (2 * i / 8)
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert sinusoidal_table(5, 7).shape == (5, 7)  # odd D works


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_layer_norm_placement(norm_first: bool) -> None:
    torch.manual_seed(0)
    layer = EncoderLayer(
        16,
        2,
        32,
        dropout=0.0,
        attn_dropout=0.0,
        act_dropout=0.0,
        activation="relu",
        norm_first=norm_first,
    ).eval()
    x = 5.0 + 3.0 * torch.randn(6, 16)  # far from zero mean / unit variance
    y = layer(x, Packing.dense(2, 3, torch.device("cpu")), None)
    # post-norm ends with a LayerNorm (zero-mean rows); pre-norm keeps the residual stream
    row_means = y.mean(-1).abs().max().item()
    assert (row_means < 1e-5) == (not norm_first)


def test_embeddings_scale_tokens_by_sqrt_d_and_add_positions() -> None:
    tokens = torch.nn.Embedding(10, 16, padding_idx=0)
    embed = Embeddings(tokens, SinusoidalPositions(8, 16), dropout=0.5).eval()
    ids, positions = torch.tensor([3, 0, 7]), torch.tensor([0, 5, 2])
    expected = 4.0 * tokens.weight[ids] + sinusoidal_table(8, 16)[positions]
    torch.testing.assert_close(embed(ids, positions), expected)


@pytest.mark.parametrize("d_model", [8, 9])
def test_sinusoid_layouts_are_the_three_toolkits_tables(d_model: int) -> None:
    half, p = d_model // 2, torch.arange(6, dtype=torch.float64)[:, None]
    i = torch.arange((d_model + 1) // 2, dtype=torch.float64)
    angles = p * 1e4 ** (-2 * i / d_model)  # Vaswani's frequencies, [P, ceil(D/2)]
    vaswani, marian = torch.zeros(6, d_model), torch.zeros(6, d_model)
    vaswani[:, 0::2], vaswani[:, 1::2] = angles.sin(), angles.cos()[:, :half]
    marian[:, : d_model - half], marian[:, d_model - half :] = angles.sin(), angles.cos()[:, :half]
    step = math.log(1e4) / (half - 1)  # fairseq's frequencies over half the dimensions
    fair = p * torch.exp(torch.arange(half, dtype=torch.float64) * -step)
    fairseq = torch.zeros(6, d_model)
    fairseq[:, :half], fairseq[:, half : 2 * half] = fair.sin(), fair.cos()  # odd D: last is 0
    for name, want in (("vaswani", vaswani), ("marian", marian), ("fairseq", fairseq)):
        torch.testing.assert_close(sinusoidal_table(6, d_model, name), want, atol=1e-6, rtol=0)


def test_position_offset_shifts_the_lookup() -> None:
    positions = SinusoidalPositions(10, 8, "fairseq", offset=2)
    assert positions.table.shape == (12, 8)  # every position up to max_positions fits
    want = sinusoidal_table(12, 8, "fairseq")[2:5]
    torch.testing.assert_close(positions(torch.arange(3)), want, atol=0, rtol=0)


def test_embeddings_scale_by_sqrt_d_unless_told_not_to() -> None:
    tokens = torch.nn.Embedding(5, 16)
    ids, pos = torch.tensor([1, 2]), torch.tensor([0, 1])
    scaled, plain = Embeddings(tokens, None, 0.0), Embeddings(tokens, None, 0.0, scale=False)
    torch.testing.assert_close(scaled(ids, pos), tokens(ids) * 4.0)
    torch.testing.assert_close(plain(ids, pos), tokens(ids))
