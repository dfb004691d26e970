"""Builder: presets' sizes, validation messages, weight tying and initialisation."""

import math
from dataclasses import asdict

import pytest
import torch
from torch import nn

from mt.config import ModelConfig, model_preset, validate_model
from mt.model import Seq2Seq, transformer
from mt.model.layers import LearnedPositions

BASE = dict(
    src_vocab_size=40,
    tgt_vocab_size=40,
    d_model=16,
    n_heads=2,
    n_layers_enc=1,
    n_layers_dec=1,
    d_ff=32,
)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared tensors are counted once


def _preset(name: str, vocab_size: int, pad_id: int = 0, **overrides: object) -> Seq2Seq:
    """The configs/model/<name>.yaml model over a joint vocabulary of `vocab_size`."""
    cfg = model_preset(name, **overrides)
    return transformer(
        src_vocab_size=vocab_size, tgt_vocab_size=vocab_size, pad_id=pad_id, **asdict(cfg)
    )


@pytest.mark.parametrize(
    ("preset", "d_model", "n_heads", "n_layers", "d_ff"),
    [
        ("tiny", 32, 2, 2, 64),
        ("small", 256, 4, 3, 1024),
        ("base", 512, 8, 6, 2048),
    ],
)
def test_presets_have_their_sizes(
    preset: str, d_model: int, n_heads: int, n_layers: int, d_ff: int
) -> None:
    model = _preset(preset, 100)
    layer = model.encoder.layers[0]
    assert model.decoder.embed.tokens.embedding_dim == d_model
    assert layer.self_attn.n_heads == n_heads
    assert len(model.encoder.layers) == len(model.decoder.layers) == n_layers
    assert layer.ffn.fc1.out_features == d_ff


def test_small_deep_shallow_preset_has_six_encoder_layers_and_one_decoder_layer() -> None:
    model, small = _preset("small_deep_shallow", 100), _preset("small", 100)
    assert (len(model.encoder.layers), len(model.decoder.layers)) == (6, 1)
    layer, small_layer = model.encoder.layers[0], small.encoder.layers[0]
    assert model.decoder.embed.tokens.embedding_dim == 256
    assert layer.self_attn.n_heads == small_layer.self_attn.n_heads == 4
    assert layer.ffn.fc1.out_features == small_layer.ffn.fc1.out_features == 1024


def test_transformer_base_parameter_count() -> None:
    # Vaswani et al. base: 44.1M without embeddings (3.15M per encoder, 4.2M per decoder layer)
    model = _preset("base", 1000)
    without_embeddings = _n_params(model) - 1000 * 512 - 4 * 512  # minus the two final norms
    assert without_embeddings == 6 * (
        4 * 512 * 513 + 2 * 512 * 2048 + 2048 + 512 + 2 * 1024
    ) + 6 * (8 * 512 * 513 + 2 * 512 * 2048 + 2048 + 512 + 3 * 1024)


def test_big_preset_accepts_overrides() -> None:
    model = _preset("big", 10, pad_id=1, n_layers_enc=1, n_layers_dec=1)
    assert model.pad_id == 1
    assert model.encoder.layers[0].self_attn.n_heads == 16
    assert len(model.encoder.layers) == len(model.decoder.layers) == 1


def test_preset_returns_seq2seq_with_pad_id() -> None:
    model = _preset("tiny", 30, pad_id=3)
    assert isinstance(model, Seq2Seq) and model.pad_id == 3


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"d_model": 250, "n_heads": 4}, "model.d_model=250 is not divisible by model.n_heads=4"),
        ({"activation": "mish"}, "model.activation"),
        ({"sinusoid": "t5"}, "model.sinusoid"),
        ({"position_offset": -1}, "model.position_offset"),
        ({"norm": "sandwich"}, "model.norm"),
        ({"positions": "rotary"}, "model.positions"),
        ({"tgt_vocab_size": 41}, "model.share_embeddings"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"attn_dropout": -0.1}, "model.attn_dropout"),
        ({"n_layers_dec": 0}, "model.n_layers_dec"),
        ({"d_ff": 0}, "model.d_ff"),
        ({"pad_id": 40}, "model.pad_id"),
        ({"src_vocab_size": 0, "share_embeddings": False}, "model.src_vocab_size"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_the_key(change: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace("(", r"\(")):
        transformer(**{**BASE, **change})


def test_builder_raises_validate_model_message_for_a_model_key() -> None:
    """One check of the model keys: the builder's message is `validate_model`'s."""
    bad = ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError) as from_config:
        validate_model(bad)
    with pytest.raises(ValueError) as from_builder:
        transformer(src_vocab_size=40, tgt_vocab_size=40, **asdict(bad))
    assert str(from_builder.value) == str(from_config.value)


def test_shared_embeddings_are_one_tensor() -> None:
    model = transformer(**BASE)
    src_w = model.encoder.embed.tokens.weight
    assert src_w is model.decoder.embed.tokens.weight
    hidden = torch.randn(3, 16)
    torch.testing.assert_close(model.project(hidden), hidden @ src_w.T)
    with torch.no_grad():
        src_w[5, 0] += 1.0  # one storage: the output projection sees the change
    assert model.project(torch.eye(16)[:1])[0, 5] == src_w[5, 0]


def test_unshared_embeddings_are_separate_and_allow_different_vocabularies() -> None:
    model = transformer(**{**BASE, "tgt_vocab_size": 41, "share_embeddings": False})
    src_w, tgt_w = model.encoder.embed.tokens.weight, model.decoder.embed.tokens.weight
    assert src_w.shape == (40, 16) and tgt_w.shape == (41, 16)
    assert src_w.data_ptr() != tgt_w.data_ptr()
    assert model.project(torch.randn(2, 16)).shape == (2, 41)


def test_initialisation() -> None:
    torch.manual_seed(0)
    model = transformer(**{**BASE, "src_vocab_size": 2000, "tgt_vocab_size": 2000, "d_model": 64})
    emb = model.decoder.embed.tokens.weight
    assert torch.all(emb[0] == 0)  # pad row
    assert abs(emb[1:].std().item() - 64**-0.5) < 0.01
    fc1 = model.encoder.layers[0].ffn.fc1
    assert fc1.weight.abs().max() <= math.sqrt(6.0 / (64 + 32)) and torch.all(fc1.bias == 0)


def test_learned_positions_option() -> None:
    model = transformer(**{**BASE, "positions": "learned", "max_positions": 20})
    assert isinstance(model.encoder.embed.positions, LearnedPositions)
    assert model.encoder.embed.positions.weight.shape == (20, 16)


def test_swish_is_silu() -> None:
    model = transformer(**{**BASE, "activation": "swish"})
    ffn = model.encoder.layers[0].ffn
    x = torch.randn(3, ffn.fc1.in_features)
    torch.testing.assert_close(ffn(x), ffn.fc2(torch.nn.functional.silu(ffn.fc1(x))))


def test_output_bias_is_added_to_every_projection_and_saved_only_when_set() -> None:
    assert "output_bias" not in transformer(**BASE).state_dict()  # mt's own: as before
    torch.manual_seed(0)
    model = transformer(**{**BASE, "output_bias": True}).eval()
    assert model.output_bias is not None and model.output_bias.abs().sum() == 0
    model.output_bias.normal_()
    hidden = torch.randn(2, BASE["d_model"])
    plain = torch.nn.functional.linear(hidden, model.decoder.embed.tokens.weight)
    torch.testing.assert_close(model.project(hidden), plain + model.output_bias)
    vocab = torch.tensor([2, 3, 7])
    shortlist = model._shortlist_projection(vocab)
    torch.testing.assert_close(shortlist(hidden), plain[:, vocab] + model.output_bias[vocab])
    assert "output_bias" in model.state_dict()
    from mt.decode.layout import onednn_layout, quantize_int8  # the inference layouts

    torch.testing.assert_close(onednn_layout(model).project(hidden), model.project(hidden))
    int8 = quantize_int8(model).project(hidden)
    torch.testing.assert_close(int8, model.project(hidden), atol=0.1, rtol=0.05)
