"""How mt's Transformer is named and laid out in Hugging Face's BART family, both directions.

Marian, Pegasus and M2M100 share one layout: the config fields of mt's hyperparameters, the
parameter names of mt's modules (mt's fused projections split into q / k / v), the
MarianTokenizer files, and Marian's order of the residual channels. Exporting
(`mt.convert.huggingface`) maps mt's modules onto these names; an importer reads the same
tables the other way.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Config field -> the mt hyperparameter it holds (vocabulary sizes differ by family).
CONFIG_FIELDS = {
    "d_model": "d_model",
    "encoder_layers": "n_layers_enc",
    "decoder_layers": "n_layers_dec",
    "encoder_attention_heads": "n_heads",
    "decoder_attention_heads": "n_heads",
    "encoder_ffn_dim": "d_ff",
    "decoder_ffn_dim": "d_ff",
    "activation_function": "activation",
    "max_position_embeddings": "max_positions",
    "dropout": "dropout",
    "attention_dropout": "attn_dropout",
    "activation_dropout": "act_dropout",
}

# A layer's linear and LayerNorm modules in mt (attribute paths) -> their names in a BART-family
# layer, each with a weight and a bias. mt fuses some projections: their parts are stacked on
# the output dimension in the order listed ([q; k; v] for self-attention, [k; v] for the
# cross-attention memory).
ENCODER_LAYER: dict[str, tuple[str, ...]] = {
    "self_attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.out": ("self_attn.out_proj",),
    "norm1": ("self_attn_layer_norm",),
    "ffn.fc1": ("fc1",),
    "ffn.fc2": ("fc2",),
    "norm2": ("final_layer_norm",),
}
DECODER_LAYER: dict[str, tuple[str, ...]] = {
    "self_attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.out": ("self_attn.out_proj",),
    "norm1": ("self_attn_layer_norm",),
    "cross_attn.q": ("encoder_attn.q_proj",),
    "cross_attn.kv": ("encoder_attn.k_proj", "encoder_attn.v_proj"),
    "cross_attn.out": ("encoder_attn.out_proj",),
    "norm2": ("encoder_attn_layer_norm",),
    "ffn.fc1": ("fc1",),
    "ffn.fc2": ("fc2",),
    "norm3": ("final_layer_norm",),
}

# Names outside the layers. The output layer and the shared embedding hold the target
# embedding, as mt ties them; Marian and Pegasus add a zero output bias (M2M100 has none).
SHARED = "model.shared.weight"
LM_HEAD = "lm_head.weight"
FINAL_LOGITS_BIAS = "final_logits_bias"


def layer_prefix(side: str, i: int) -> str:
    """Name prefix of layer `i` of a stack (`side`: encoder or decoder, as in mt)."""
    return f"model.{side}.layers.{i}"


def embed_tokens(side: str) -> str:
    """Name of a stack's token embedding."""
    return f"model.{side}.embed_tokens.weight"


def embed_positions(side: str) -> str:
    """Name of a stack's position table (Pegasus loads it; Marian and M2M100 compute theirs)."""
    return f"model.{side}.embed_positions.weight"


def final_norm(side: str) -> str:
    """Name prefix of a stack's final LayerNorm (pre-norm models only)."""
    return f"model.{side}.layer_norm"


# MarianTokenizer's files: SentencePiece models per side, and piece -> id maps (the target's
# own only where the vocabularies are separate).
SOURCE_SPM, TARGET_SPM = "source.spm", "target.spm"
VOCAB, TARGET_VOCAB = "vocab.json", "target_vocab.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


# --- Marian's residual channels ------------------------------------------------------------------
# Marian computes its sinusoidal positions itself, in [sin ... | cos ...] order; mt's table
# interleaves [sin, cos, sin, cos, ...]. Permuting the residual stream's channels maps one onto
# the other: every weight that reads the stream is permuted on its input dimension, every one
# that writes it on its output dimension. LayerNorm commutes with a channel permutation and the
# heads' own dimensions are untouched, so the model computes exactly the same function.

_READS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "fc1.weight", "embed_tokens.weight",
          "shared.weight", "lm_head.weight")  # fmt: skip
_WRITES = ("out_proj.weight", "out_proj.bias", "fc2.weight", "fc2.bias", "norm.weight",
           "norm.bias")  # fmt: skip


def marian_channel_order(d_model: int) -> Tensor:
    """Channel j of Marian's residual stream is mt's channel `order[j]` (LongTensor [D]);
    `order.argsort()` is the way back."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def permute_channels(weights: dict[str, Tensor], order: Tensor) -> dict[str, Tensor]:
    """`weights` (BART-family names) with the residual channels taken in `order` [D]: the new
    channel j is the old channel order[j]. Position tables are not permuted (drop them first
    where the receiving model computes its own); every tensor comes back contiguous."""
    out = {}
    for name, t in weights.items():
        if name.endswith(_READS):
            t = t[:, order]
        elif name.endswith(_WRITES):
            t = t[order]
        out[name] = t.contiguous()
    return out
