"""format=ctranslate2: a run as a CTranslate2 model folder that translates as mt does.

A `TransformerSpec` filled weight by weight, with the position table written out (CTranslate2's
own sinusoids start at position 1 and lay out [sin | cos]), `add_source_eos` (mt encodes
`pieces + </s>`) and layer-norm epsilon 1e-5. `positions=rope` becomes CTranslate2's rotary
self-attention over the whole head, half-split (`rotary_interleave=False`), base 10000, with no
position table (cross-attention has none, in both); `positions=relative` its Shaw relative
self-attention, whose `relative_position_keys` and `_values` [2k+1, Dh] rows are indexed
clip(j - i, -k, k) + k as mt's tables are. An imported model's options travel too: swish, its
[sin | cos] table from its position offset, unscaled embeddings, and its output bias (with -inf
at the ids it never emits) as the projection's bias. The folder also holds the run's tokenizer
files (SentencePiece models, and an imported run's vocabulary files).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mt.convert.source import Source, check_representable, missing_extra, pieces, positions_table
from mt.errors import MTError
from mt.model.attention import SelfAttention
from mt.model.layers import DecoderLayer, EncoderLayer
from mt.model.positions import ROPE_BASE
from mt.model.transformer import Seq2Seq
from mt.tokenizer import BOS_ID, EOS_ID, UNK_ID

CT2_QUANTIZATIONS = (
    "none", "int8", "int8_float32", "int16", "float16", "bfloat16", "int8_float16",
)  # fmt: skip


def _np(t: Tensor) -> Any:
    return t.detach().float().cpu().numpy()


def _ct2_linear(spec: Any, linear: nn.Linear) -> None:
    spec.weight = _np(linear.weight)
    spec.bias = _np(linear.bias)


def _ct2_norm(spec: Any, norm: nn.LayerNorm) -> None:
    spec.gamma = _np(norm.weight)
    spec.beta = _np(norm.bias)


def _ct2_self_attention(spec: Any, attn: SelfAttention) -> None:
    _ct2_linear(spec.linear[0], attn.qkv)  # [q; k; v], as CT2 fuses
    _ct2_linear(spec.linear[1], attn.out)
    if attn.max_relative_positions > 0:  # rows clip(j - i, -k, k) + k, as CT2 indexes them
        spec.relative_position_keys = _np(attn.relative_keys)
        spec.relative_position_values = _np(attn.relative_values)


def _ct2_encoder_layer(spec: Any, layer: EncoderLayer) -> None:
    _ct2_self_attention(spec.self_attention, layer.self_attn)
    _ct2_norm(spec.self_attention.layer_norm, layer.norm1)
    _ct2_linear(spec.ffn.linear_0, layer.ffn.fc1)
    _ct2_linear(spec.ffn.linear_1, layer.ffn.fc2)
    _ct2_norm(spec.ffn.layer_norm, layer.norm2)


def _ct2_decoder_layer(spec: Any, layer: DecoderLayer) -> None:
    _ct2_self_attention(spec.self_attention, layer.self_attn)
    _ct2_norm(spec.self_attention.layer_norm, layer.norm1)
    _ct2_linear(spec.attention.linear[0], layer.cross_attn.q)
    _ct2_linear(spec.attention.linear[1], layer.cross_attn.kv)  # [k; v]
    _ct2_linear(spec.attention.linear[2], layer.cross_attn.out)
    _ct2_norm(spec.attention.layer_norm, layer.norm2)
    _ct2_linear(spec.ffn.linear_0, layer.ffn.fc1)
    _ct2_linear(spec.ffn.linear_1, layer.ffn.fc2)
    _ct2_norm(spec.ffn.layer_norm, layer.norm3)


def ctranslate2_spec(
    model: Seq2Seq, hp: dict[str, Any], src_vocab: list[str], tgt_vocab: list[str]
) -> Any:
    """A filled `ctranslate2.specs.TransformerSpec` of `model` (built with arguments `hp`),
    with the pieces of its vocabularies by id."""
    try:
        from ctranslate2.specs import common_spec, transformer_spec
    except ImportError:
        raise missing_extra("ctranslate2") from None
    check_representable(hp, "ctranslate2")
    activation = {
        "relu": common_spec.Activation.RELU,
        "gelu": common_spec.Activation.GELU,
        "swish": common_spec.Activation.SWISH,
    }
    positions = hp.get("positions", "sinusoidal")
    kw: dict[str, Any] = dict(
        pre_norm=hp["norm"] == "pre", activation=activation[hp["activation"]],
        relative_position=positions == "relative",
    )  # fmt: skip
    if positions == "rope":  # every head dim, half-split pairs (not interleaved), mt's base
        kw.update(rotary_dim=0, rotary_interleave=False, rotary_base=ROPE_BASE)
    spec = transformer_spec.TransformerSpec(
        transformer_spec.TransformerEncoderSpec(hp["n_layers_enc"], hp["n_heads"], **kw),
        transformer_spec.TransformerDecoderSpec(hp["n_layers_dec"], hp["n_heads"], **kw),
    )
    enc, dec = spec.encoder, spec.decoder
    enc.embeddings[0].weight = _np(model.encoder.embed.tokens.weight)
    dec.embeddings.weight = _np(model.decoder.embed.tokens.weight)
    if positions in ("sinusoidal", "learned"):
        enc.position_encodings.encodings = _np(positions_table(model, "encoder"))
        dec.position_encodings.encodings = _np(positions_table(model, "decoder"))
    elif hasattr(enc, "position_encodings"):  # rope: the encoder spec still declares one
        del enc.position_encodings  # (CT2 ignores it once layers rotate); mt adds no table
    for layer_spec, layer in zip(enc.layer, model.encoder.layers, strict=True):
        _ct2_encoder_layer(layer_spec, layer)
    for layer_spec, layer in zip(dec.layer, model.decoder.layers, strict=True):
        _ct2_decoder_layer(layer_spec, layer)
    if hp["norm"] == "pre":
        _ct2_norm(enc.layer_norm, model.encoder.final_norm)
        _ct2_norm(dec.layer_norm, model.decoder.final_norm)
    enc.scale_embeddings = dec.scale_embeddings = hp.get("scale_embeddings", True)
    dec.projection.weight = _np(model.decoder.embed.tokens.weight)  # tied
    if model.output_bias is not None:  # an imported model's final_logits_bias
        dec.projection.bias = _np(model.output_bias)
    spec.config.layer_norm_epsilon = 1e-5  # torch's LayerNorm default, which mt uses
    spec.config.add_source_eos = True  # mt encodes pieces + </s>
    spec.config.decoder_start_token = tgt_vocab[BOS_ID]
    spec.config.bos_token, spec.config.eos_token = tgt_vocab[BOS_ID], tgt_vocab[EOS_ID]
    spec.config.unk_token = tgt_vocab[UNK_ID]
    spec.register_source_vocabulary(src_vocab)
    spec.register_target_vocabulary(tgt_vocab)
    return spec


def write_ctranslate2(source: Source, out_dir: Path, quantization: str = "none") -> None:
    """Convert the source model into a CTranslate2 model folder `out_dir` (must not exist),
    beside the run's SentencePiece model(s) under their own names."""
    vocabs = pieces(source.src_tok), pieces(source.tgt_tok)
    save_ctranslate2(ctranslate2_spec(source.model, source.model_args, *vocabs), out_dir,
                     quantization)  # fmt: skip
    for path in {*source.src_tok.files(), *source.tgt_tok.files()}:
        shutil.copyfile(path, out_dir / path.name)


def save_ctranslate2(spec: Any, out_dir: Path, quantization: str = "none") -> None:
    """Validate, quantize and save a filled spec with CTranslate2's converter API."""
    from ctranslate2.converters.converter import Converter  # an optional extra: mt[export]

    if quantization not in CT2_QUANTIZATIONS:
        raise MTError(
            f"quantization={quantization!r} is not one of {', '.join(CT2_QUANTIZATIONS)}."
        )

    class _Filled(Converter):
        def _load(self) -> Any:
            return spec

    quant = None if quantization == "none" else quantization
    _Filled().convert(str(out_dir), quantization=quant)
