"""Model builders: `transformer(...)` turns explicit hyperparameters into a `Seq2Seq`;
`transformer_tiny/small/base/big` are size presets on top of it (YAML `_target_`s point here).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mt.model.layers import (
    ACTIVATIONS,
    DecoderLayer,
    Embeddings,
    EncoderLayer,
    LearnedPositions,
    SinusoidalPositions,
)
from mt.model.transformer import Decoder, Encoder, Seq2Seq

NORMS = ("pre", "post")
POSITIONS = ("sinusoidal", "learned")


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"model.{key}={value!r} is not one of {', '.join(allowed)}.")


def _validate(hp: dict[str, Any]) -> None:
    """Raise ValueError naming the first invalid hyperparameter."""
    for key in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "d_ff", "max_positions"):
        if hp[key] < 1:
            raise ValueError(f"model.{key}={hp[key]} must be a positive integer.")
    for key in ("n_layers_enc", "n_layers_dec"):
        if hp[key] < 1:
            raise ValueError(f"model.{key}={hp[key]} must be at least 1.")
    if hp["d_model"] % hp["n_heads"]:
        raise ValueError(
            f"model.d_model={hp['d_model']} is not divisible by model.n_heads={hp['n_heads']}."
        )
    for key in ("dropout", "attn_dropout", "act_dropout"):
        if not 0.0 <= hp[key] < 1.0:
            raise ValueError(f"model.{key}={hp[key]} must be in [0, 1).")
    _check_choice("activation", hp["activation"], tuple(ACTIVATIONS))
    _check_choice("norm", hp["norm"], NORMS)
    _check_choice("positions", hp["positions"], POSITIONS)
    if hp["share_embeddings"] and hp["src_vocab_size"] != hp["tgt_vocab_size"]:
        raise ValueError(
            f"model.share_embeddings=True needs model.src_vocab_size={hp['src_vocab_size']} "
            f"to equal model.tgt_vocab_size={hp['tgt_vocab_size']}."
        )
    if not 0 <= hp["pad_id"] < min(hp["src_vocab_size"], hp["tgt_vocab_size"]):
        raise ValueError(f"model.pad_id={hp['pad_id']} is outside the vocabulary.")


def _token_embedding(vocab_size: int, d_model: int, pad_id: int) -> nn.Embedding:
    """Embedding initialised normal(0, D**-0.5) with a zero pad row, as in fairseq."""
    embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
    nn.init.normal_(embed.weight, mean=0.0, std=d_model**-0.5)
    nn.init.zeros_(embed.weight.data[pad_id])
    return embed


def _positions(kind: str, max_positions: int, d_model: int) -> nn.Module:
    if kind == "learned":
        return LearnedPositions(max_positions, d_model)
    return SinusoidalPositions(max_positions, d_model)


def transformer(
    *,
    src_vocab_size: int,
    tgt_vocab_size: int,
    d_model: int,
    n_heads: int,
    n_layers_enc: int,
    n_layers_dec: int,
    d_ff: int,
    dropout: float = 0.1,
    attn_dropout: float = 0.0,
    act_dropout: float = 0.0,
    activation: str = "relu",
    norm: str = "pre",
    positions: str = "sinusoidal",
    max_positions: int = 1024,
    share_embeddings: bool = True,
    pad_id: int = 0,
) -> Seq2Seq:
    """Build an encoder-decoder Transformer.

    Args:
        src_vocab_size: Source vocabulary size.
        tgt_vocab_size: Target vocabulary size V.
        d_model: Model dimension D.
        n_heads: Attention heads H; must divide D.
        n_layers_enc: Encoder layers.
        n_layers_dec: Decoder layers.
        d_ff: Feed-forward inner dimension.
        dropout: Dropout on embeddings+positions and on every residual branch.
        attn_dropout: Dropout on attention probabilities (inside SDPA, training only).
        act_dropout: Dropout after the feed-forward activation.
        activation: "relu" or "gelu".
        norm: "pre" (LayerNorm before each sublayer plus a final one per stack) or "post".
        positions: "sinusoidal" (fixed) or "learned".
        max_positions: Longest source/target sequence the positions cover.
        share_embeddings: One matrix for source, target and output projection (needs equal
            vocabularies). Otherwise source and target embeddings are separate; the output
            projection is always tied to the target embedding.
        pad_id: Padding id; its embedding row starts at zero and gets no gradient from lookups.

    Returns:
        The model, initialised: xavier-uniform linears, zero biases, normal(0, D**-0.5) embeddings.

    Raises:
        ValueError: If a hyperparameter is invalid; the message names the key.
    """
    hp = dict(locals())
    _validate(hp)
    tgt_tokens = _token_embedding(tgt_vocab_size, d_model, pad_id)
    src_tokens = (
        tgt_tokens if share_embeddings else _token_embedding(src_vocab_size, d_model, pad_id)
    )
    layer_kw: dict[str, Any] = dict(
        dropout=dropout,
        attn_dropout=attn_dropout,
        act_dropout=act_dropout,
        activation=activation,
        norm_first=norm == "pre",
    )

    def final_norm() -> nn.Module:
        return nn.LayerNorm(d_model) if norm == "pre" else nn.Identity()

    encoder = Encoder(
        Embeddings(src_tokens, _positions(positions, max_positions, d_model), dropout),
        [EncoderLayer(d_model, n_heads, d_ff, **layer_kw) for _ in range(n_layers_enc)],
        final_norm(),
    )
    decoder = Decoder(
        Embeddings(tgt_tokens, _positions(positions, max_positions, d_model), dropout),
        [DecoderLayer(d_model, n_heads, d_ff, **layer_kw) for _ in range(n_layers_dec)],
        final_norm(),
    )
    return Seq2Seq(encoder, decoder, pad_id=pad_id)


def _preset(
    defaults: dict[str, Any], src_vocab_size: int, tgt_vocab_size: int, **overrides: Any
) -> Seq2Seq:
    kwargs = {**defaults, **overrides}
    return transformer(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, **kwargs)


def transformer_tiny(src_vocab_size: int, tgt_vocab_size: int, **overrides: Any) -> Seq2Seq:
    """D 32, 2 heads, 2+2 layers, d_ff 64: for tests and smoke runs."""
    defaults = dict(d_model=32, n_heads=2, n_layers_enc=2, n_layers_dec=2, d_ff=64)
    return _preset(defaults, src_vocab_size, tgt_vocab_size, **overrides)


def transformer_small(src_vocab_size: int, tgt_vocab_size: int, **overrides: Any) -> Seq2Seq:
    """D 256, 4 heads, 3+3 layers, d_ff 1024: CPU-trainable baseline."""
    defaults = dict(d_model=256, n_heads=4, n_layers_enc=3, n_layers_dec=3, d_ff=1024)
    return _preset(defaults, src_vocab_size, tgt_vocab_size, **overrides)


def transformer_base(src_vocab_size: int, tgt_vocab_size: int, **overrides: Any) -> Seq2Seq:
    """Transformer-base of Vaswani et al. (2017): D 512, 8 heads, 6+6 layers, d_ff 2048."""
    defaults = dict(d_model=512, n_heads=8, n_layers_enc=6, n_layers_dec=6, d_ff=2048)
    return _preset(defaults, src_vocab_size, tgt_vocab_size, **overrides)


def transformer_big(src_vocab_size: int, tgt_vocab_size: int, **overrides: Any) -> Seq2Seq:
    """Transformer-big of Vaswani et al. (2017): D 1024, 16 heads, 6+6 layers, d_ff 4096."""
    defaults = dict(d_model=1024, n_heads=16, n_layers_enc=6, n_layers_dec=6, d_ff=4096)
    return _preset(defaults, src_vocab_size, tgt_vocab_size, **overrides)
