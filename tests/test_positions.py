"""Rotary and relative positions, and windowed self-attention (issue 14).

Shift invariance at the attention-module level, cached decoding against teacher forcing (beam
rows too), the window against an explicit band mask, the blocked path against the masked one,
training steps, and the config checks.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from mt.config import ModelConfig, model_preset, validate_model
from mt.model import Seq2Seq, transformer
from mt.model.attention import SelfAttention
from mt.model.cache import KVCache
from mt.model.packing import Packing
from mt.model.positions import relative_index, rotate
from mt.model.window import band_mask, encoder_window, merge_windows, split_windows

V, PAD, BOS = 50, 0, 2
D, H = 16, 4
CPU = torch.device("cpu")
OPTIONS = [
    {"positions": "rope"},
    {"positions": "relative", "max_relative_positions": 3},
    {"positions": "rope", "attn_window": 2},
    {"positions": "relative", "max_relative_positions": 2, "attn_window": 3, "norm": "post"},
    {"attn_window": 2},
]


def _model(**overrides: object) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = model_preset("tiny", **overrides)
    return transformer(src_vocab_size=V, tgt_vocab_size=V, **asdict(cfg)).eval()


def _src(lengths: list[int], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random right-padded source ids [B, S] and its pad mask (True at padding)."""
    width = width or max(lengths)
    pad_mask = torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None]
    return torch.randint(4, V, (len(lengths), width)).masked_fill(pad_mask, PAD), pad_mask


def _tgt(rows: int, length: int) -> torch.Tensor:
    tgt = torch.randint(4, V, (rows, length))
    tgt[:, 0] = BOS
    return tgt


def _dense(b: int, t: int) -> Packing:
    return Packing.dense(b, t, CPU)


def _attn(**options: object) -> SelfAttention:
    torch.manual_seed(0)
    return SelfAttention(D, H, **options).eval()


# --- shift invariance --------------------------------------------------------------------------


def test_rotary_scores_depend_only_on_the_distance() -> None:
    attn = _attn(rope=True)
    x = torch.randn(2, 6, D)
    q, k, _ = attn._split(attn.qkv(x), 3)  # 3 x [B, H, T, Dh]
    scores = rotate(q, 0) @ rotate(k, 0).transpose(-1, -2)
    for shift in (1, 17, 1000):
        shifted = rotate(q, shift) @ rotate(k, shift).transpose(-1, -2)
        torch.testing.assert_close(shifted, scores, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(rotate(q, 0) @ rotate(k, 3).transpose(-1, -2), scores)


def test_rotary_layout_is_half_split_base_10000() -> None:
    x = torch.zeros(1, 1, 1, 8)
    x[..., 1] = 1.0  # pair (1, 5): angle pos * 10000**(-2/8)
    y = rotate(x, 3)
    angle = 3 * 10_000 ** (-2 / 8)
    assert y[..., 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert y[..., 5].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert y[..., [0, 2, 3, 4, 6, 7]].abs().max() == 0


def test_relative_index_depends_only_on_the_distance() -> None:
    index = relative_index(0, 5, 5, 2, CPU)
    torch.testing.assert_close(relative_index(9, 5, 14, 2, CPU)[:, 9:], index)
    assert index[0].tolist() == [2, 3, 4, 4, 4] and index[4].tolist() == [0, 0, 0, 1, 2]


@pytest.mark.parametrize(
    "options", [{"rope": True}, {"max_relative_positions": 2}, {"max_relative_positions": 9}]
)
def test_attention_output_unchanged_when_every_position_shifts(options: dict) -> None:
    """The same T tokens at positions 0..T-1 (no cache) and at m..m+T-1 (after m masked cached
    positions of garbage): the outputs agree iff the scores ignore absolute positions."""
    attn = _attn(**options)
    x = torch.randn(2, 5, D)
    out = attn(x.flatten(0, 1), _dense(2, 5))
    for shift in (1, 7):
        cache = KVCache.empty(2, H, shift + 5, D // H, dtype=torch.float32, device=CPU)
        cache.append(*(100 * torch.randn(2, 2, H, shift, D // H)).unbind(0))
        mask = (torch.arange(shift + 5) >= shift)[None, None, None, :]  # only the T new keys
        shifted = attn(x.flatten(0, 1), _dense(2, 5), mask, cache=cache)
        torch.testing.assert_close(shifted, out, atol=1e-5, rtol=1e-5)


def test_relative_attention_matches_shaw_equations() -> None:
    attn = _attn(max_relative_positions=2)
    x = torch.randn(1, 6, D)
    q, k, v = attn._split(attn.qkv(x), 3)
    index = relative_index(0, 6, 6, 2, CPU)
    a_k, a_v = attn.relative_keys[index], attn.relative_values[index]  # [T, S, Dh]
    scores = (q @ k.transpose(-1, -2) + torch.einsum("bhtd,tsd->bhts", q, a_k)) / math.sqrt(4)
    probs = scores.softmax(-1)
    z = probs @ v + torch.einsum("bhts,tsd->bhtd", probs, a_v)  # [B, H, T, Dh]
    expected = attn.out(z.transpose(1, 2).reshape(6, D))
    torch.testing.assert_close(attn(x[0], _dense(1, 6)), expected, atol=1e-5, rtol=1e-5)


# --- cached decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("overrides", OPTIONS)
def test_cached_decoding_equals_teacher_forcing(overrides: dict, k: int) -> None:
    model = _model(**overrides)
    src, pad_mask = _src([6, 2, 4])
    tgt = _tgt(3 * k, 7)  # row b*K + j decodes source b
    tgt[1, 5:] = PAD  # right padding in teacher forcing: real positions unchanged
    with torch.no_grad():
        memory = model.encode(src, pad_mask)
        rows_memory, rows_mask = memory.repeat_interleave(k, 0), pad_mask.repeat_interleave(k, 0)
        full = model.project(model.decode(tgt, rows_memory, rows_mask))  # [B*K, T, V]
        state = model.init_state(memory, pad_mask, max_len=9, rows_per_source=k)
        steps = [model.decode_step(tgt[:, t], state) for t in range(7)]
    stepped = torch.stack(steps, 1)
    real = tgt != PAD
    torch.testing.assert_close(stepped[real], full[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", OPTIONS)
def test_extra_source_padding_does_not_change_outputs(overrides: dict) -> None:
    model = _model(**overrides)
    src, pad_mask = _src([9, 2, 7])
    wide, wide_mask = F.pad(src, (0, 4), value=PAD), F.pad(pad_mask, (0, 4), value=True)
    tgt = _tgt(3, 5)
    with torch.no_grad():
        torch.testing.assert_close(
            model(wide, wide_mask, tgt), model(src, pad_mask, tgt), atol=1e-5, rtol=1e-5
        )


# --- windowed attention ------------------------------------------------------------------------


def _padded_input(lengths: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor, Packing]:
    """Packed x [N, D], key padding mask [B, 1, 1, S] (True = real) and the packing."""
    pad_mask = torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None]
    packing = Packing.from_pad_mask(pad_mask)
    return packing.pack(torch.randn(len(lengths), width, D)), ~pad_mask[:, None, None, :], packing


@pytest.mark.parametrize("options", [{}, {"rope": True}, {"max_relative_positions": 3}])
@pytest.mark.parametrize(("width", "window"), [(13, 3), (12, 4), (7, 1), (5, 2)])
def test_blocked_window_equals_band_masked_attention(options, width, window) -> None:
    attn = _attn(**options)
    x, mask, packing = _padded_input([width, 4, width - 2], width)
    band = band_mask(width, width, window, False, CPU)
    eye = torch.eye(width, dtype=torch.bool)
    masked = attn(x, packing, (band & mask) | eye)  # | eye: pad queries keep a key (no NaN)
    blocked = attn(x, packing, mask, window=window)
    torch.testing.assert_close(blocked, masked, atol=1e-5, rtol=1e-5)


def test_blocked_window_without_padding_and_backward() -> None:
    attn = _attn(rope=True).train()
    x = torch.randn(2 * 11, D, requires_grad=True)
    blocked = attn(x, _dense(2, 11), None, window=3)
    masked = attn(x, _dense(2, 11), band_mask(11, 11, 3, False, CPU))
    torch.testing.assert_close(blocked, masked, atol=1e-5, rtol=1e-5)
    (g_blocked,) = torch.autograd.grad(blocked.square().sum(), x)
    (g_masked,) = torch.autograd.grad(masked.square().sum(), x)
    torch.testing.assert_close(g_blocked, g_masked, atol=1e-5, rtol=1e-5)


def test_split_and_merge_windows_round_trip() -> None:
    q = torch.randn(2, H, 10, 4)
    qb, kb, vb, block_mask = split_windows(q, q, q, None, 4)
    assert qb.shape == (6, H, 4, 4) and kb.shape == vb.shape == (6, H, 12, 4)
    assert block_mask.shape == (6, 1, 4, 12)
    torch.testing.assert_close(merge_windows(qb, 2, 10), q)
    torch.testing.assert_close(kb[1, :, 4:8], q[0, :, 4:8])  # block 1's own keys, W + [0, W)


@pytest.mark.parametrize("width", [5, 8, 13, 30])
def test_windowed_encoder_equals_full_encoder_with_a_band_mask(width: int) -> None:
    """Both encoder window paths (band mask for S <= 3W, blocks beyond) against the default
    model given the band mask by hand; the window adds no parameters."""
    windowed, full = _model(attn_window=3), _model()
    assert windowed.state_dict().keys() == full.state_dict().keys()
    full.load_state_dict(windowed.state_dict())
    src, pad_mask = _src([width, 3, width - 1], width)
    packing = Packing.from_pad_mask(pad_mask)
    band = band_mask(width, width, 3, False, CPU) & ~pad_mask[:, None, None, :]
    band |= torch.eye(width, dtype=torch.bool)
    with torch.no_grad():
        expected = full.encoder(src, packing, band)
        got = windowed.encoder(src, packing, ~pad_mask[:, None, None, :])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert encoder_window(None, width, 3, CPU)[1] == (3 if width > 9 else 0)


def test_windowed_decoder_self_attention_is_a_causal_band() -> None:
    attn = _attn()
    x = torch.randn(2 * 8, D)
    band = band_mask(8, 8, 2, True, CPU)
    assert band[5].tolist() == [False] * 3 + [True] * 3 + [False] * 2
    q, k, v = attn._split(attn.qkv(x).view(2, 8, 3 * D), 3)
    probs = (q @ k.transpose(-1, -2) / 2).masked_fill(~band, float("-inf")).softmax(-1)
    expected = attn.out((probs @ v).transpose(1, 2).reshape(16, D))
    torch.testing.assert_close(attn(x, _dense(2, 8), band), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [7, 8, 50])
def test_window_at_least_the_length_equals_full_attention(window: int) -> None:
    windowed, full = _model(attn_window=window), _model()
    src, pad_mask = _src([8, 3, 6])
    tgt = _tgt(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(windowed(src, pad_mask, tgt), full(src, pad_mask, tgt))


def test_window_changes_long_sequences() -> None:
    windowed, full = _model(attn_window=2), _model()
    src, pad_mask = _src([9, 9])
    tgt = _tgt(2, 9)
    with torch.no_grad():
        out, reference = windowed(src, pad_mask, tgt), full(src, pad_mask, tgt)
    assert not torch.allclose(out, reference)


# --- parameters, training, config --------------------------------------------------------------


def test_parameters_only_when_enabled() -> None:
    default = set(_model().state_dict())
    assert set(_model(positions="rope").state_dict()) == default  # sinusoidal table: a buffer
    assert set(_model(attn_window=4).state_dict()) == default
    relative = _model(positions="relative", max_relative_positions=4)
    added = set(relative.state_dict()) - default
    assert default <= set(relative.state_dict())
    assert added == {
        f"{stack}.layers.{i}.self_attn.relative_{kind}"
        for stack in ("encoder", "decoder")
        for i in range(2)
        for kind in ("keys", "values")
    }
    assert relative.encoder.layers[0].self_attn.relative_keys.shape == (9, 16)  # [2k+1, Dh]
    assert relative.encoder.embed.positions is None
    assert _model(positions="learned").encoder.embed.positions is not None


@pytest.mark.parametrize("overrides", OPTIONS)
def test_training_steps_give_finite_loss_and_gradients(overrides: dict) -> None:
    torch.manual_seed(0)
    model = _model(dropout=0.1, attn_dropout=0.1, **overrides).train()
    src, pad_mask = _src([12, 9, 7, 12])
    tgt = _tgt(4, 11)
    tgt[2, 8:] = PAD
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        logits = model(src, pad_mask, tgt[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_bf16_autocast_close_to_fp32() -> None:
    model = _model(positions="relative", max_relative_positions=3, attn_window=3)
    src, pad_mask = _src([12, 7])
    tgt = _tgt(2, 10)
    reference = model(src, pad_mask, tgt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, pad_mask, tgt)
        memory = model.encode(src, pad_mask)
        state = model.init_state(memory, pad_mask, max_len=4)
        step = model.decode_step(tgt[:, 0], state)
    torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.05)
    torch.testing.assert_close(step.float(), reference[:, 0], atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"positions": "relative"}, "model.max_relative_positions"),
        ({"positions": "relative", "max_relative_positions": -1}, "model.max_relative_positions"),
        ({"max_relative_positions": 4}, "model.max_relative_positions"),
        ({"attn_window": -1}, "model.attn_window"),
        ({"positions": "rope", "d_model": 30, "n_heads": 2}, "model.positions"),
        ({"positions": "alibi"}, "model.positions"),
    ],
)
def test_validate_model_names_the_key(change: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        validate_model(ModelConfig(**change))


def test_new_options_validate() -> None:
    validate_model(ModelConfig(positions="rope", attn_window=64))
    validate_model(ModelConfig(positions="relative", max_relative_positions=16))
