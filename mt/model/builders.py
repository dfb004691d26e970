"""Model builder: `transformer(...)` turns explicit hyperparameters into an initialised `Seq2Seq`.

Size presets live only in configs/model/*.yaml; `mt.config.model_preset(name)` reads one into the
`ModelConfig` whose fields are this builder's keyword arguments.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
from torch import nn

from mt.config import ModelConfig, validate_model
from mt.model.layers import (
    DecoderLayer,
    Embeddings,
    EncoderLayer,
    LearnedPositions,
    SinusoidalPositions,
)
from mt.model.transformer import Decoder, Encoder, Seq2Seq


def _check_vocabulary(
    src_vocab_size: int, tgt_vocab_size: int, pad_id: int, share_embeddings: bool
) -> None:
    """Raise ValueError naming the first vocabulary key that does not fit the others."""
    for key, size in (("src_vocab_size", src_vocab_size), ("tgt_vocab_size", tgt_vocab_size)):
        if size < 1:
            raise ValueError(f"model.{key}={size} must be a positive integer.")
    if share_embeddings and src_vocab_size != tgt_vocab_size:
        raise ValueError(
            f"model.share_embeddings=True needs model.src_vocab_size={src_vocab_size} "
            f"to equal model.tgt_vocab_size={tgt_vocab_size}."
        )
    if not 0 <= pad_id < min(src_vocab_size, tgt_vocab_size):
        raise ValueError(f"model.pad_id={pad_id} is outside the vocabulary.")


def _token_embedding(vocab_size: int, d_model: int, pad_id: int) -> nn.Embedding:
    """Embedding initialised normal(0, D**-0.5) with a zero pad row, as in fairseq."""
    embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
    nn.init.normal_(embed.weight, mean=0.0, std=d_model**-0.5)
    nn.init.zeros_(embed.weight.data[pad_id])
    return embed


def _embeddings(tokens: nn.Embedding, hp: ModelConfig) -> Embeddings:
    """Token embedding plus this stack's own position table (none for rope and relative, whose
    positions enter self-attention), then dropout."""
    positions: nn.Module | None = None
    if hp.positions == "learned":
        positions = LearnedPositions(hp.max_positions, hp.d_model)
    elif hp.positions == "sinusoidal":
        positions = SinusoidalPositions(
            hp.max_positions, hp.d_model, hp.sinusoid, hp.position_offset
        )
    return Embeddings(tokens, positions, hp.dropout, hp.scale_embeddings)


def _layer_kwargs(hp: ModelConfig) -> dict[str, Any]:
    """The keyword arguments EncoderLayer and DecoderLayer share."""
    return dict(
        dropout=hp.dropout,
        attn_dropout=hp.attn_dropout,
        act_dropout=hp.act_dropout,
        activation=hp.activation,
        norm_first=hp.norm == "pre",
        rope=hp.positions == "rope",
        max_relative_positions=hp.max_relative_positions if hp.positions == "relative" else 0,
    )


def _final_norm(hp: ModelConfig) -> nn.Module:
    """A LayerNorm after the last pre-norm layer; post-norm layers end normalised already."""
    return nn.LayerNorm(hp.d_model) if hp.norm == "pre" else nn.Identity()


def _encoder(tokens: nn.Embedding, hp: ModelConfig) -> Encoder:
    """Source embeddings, hp.n_layers_enc encoder layers and the final norm."""
    # positions before layers: a seed draws learned positions' initial values first, as always
    embed = _embeddings(tokens, hp)
    kw = _layer_kwargs(hp)
    layers = [EncoderLayer(hp.d_model, hp.n_heads, hp.d_ff, **kw) for _ in range(hp.n_layers_enc)]
    return Encoder(embed, layers, _final_norm(hp), hp.attn_window)


def _decoder(tokens: nn.Embedding, hp: ModelConfig) -> Decoder:
    """Target embeddings, hp.n_layers_dec decoder layers and the final norm."""
    embed = _embeddings(tokens, hp)
    kw = _layer_kwargs(hp)
    layers = [DecoderLayer(hp.d_model, hp.n_heads, hp.d_ff, **kw) for _ in range(hp.n_layers_dec)]
    return Decoder(embed, layers, _final_norm(hp), hp.attn_window)


def _seq2seq(hp: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int) -> Seq2Seq:
    """Embeddings (one matrix when shared), both stacks and the output bias, if any."""
    tgt_tokens = _token_embedding(tgt_vocab_size, hp.d_model, pad_id)
    src_tokens = (
        tgt_tokens if hp.share_embeddings else _token_embedding(src_vocab_size, hp.d_model, pad_id)
    )
    bias = torch.zeros(tgt_vocab_size) if hp.output_bias else None
    return Seq2Seq(_encoder(src_tokens, hp), _decoder(tgt_tokens, hp), pad_id, bias)


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
    max_relative_positions: int = 0,
    attn_window: int = 0,
    scale_embeddings: bool = True,
    sinusoid: str = "vaswani",
    position_offset: int = 0,
    output_bias: bool = False,
    pad_id: int = 0,
) -> Seq2Seq:
    """Build an encoder-decoder Transformer, initialised: xavier-uniform linears, zero biases,
    normal(0, D**-0.5) embeddings.

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
        activation: "relu", "gelu" or "swish" (SiLU).
        norm: "pre" (LayerNorm before each sublayer plus a final one per stack) or "post".
        positions: "sinusoidal" | "learned" (embeddings) | "rope" | "relative" (self-attention).
        max_positions: Longest source/target sequence the sinusoidal/learned positions cover.
        share_embeddings: One matrix for source, target and output projection (equal
            vocabularies); else separate source and target ones, the output tied to the target.
        max_relative_positions: k > 0 clips relative distances (positions="relative" only).
        attn_window: W > 0: self-attention sees W positions either side (decoder: back); 0: all.
        scale_embeddings, sinusoid, position_offset, output_bias: Token embeddings times
            sqrt(D) or not; the sinusoidal table's layout and position offset
            (`mt.model.layers.SinusoidalPositions`); a fixed logit bias [V] (zero until set).
        pad_id: Padding id; its embedding row starts at zero and gets no gradient from lookups.

    Raises:
        ValueError: If a hyperparameter is invalid, naming the key (`mt.config.validate_model`).
    """
    args = dict(locals())  # every ModelConfig field is an argument of the same name
    hp = ModelConfig(**{f.name: args[f.name] for f in fields(ModelConfig)})
    validate_model(hp)
    _check_vocabulary(src_vocab_size, tgt_vocab_size, pad_id, share_embeddings)
    return _seq2seq(hp, src_vocab_size, tgt_vocab_size, pad_id)
