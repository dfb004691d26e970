"""mt export: a trained run as a CTranslate2 model or a Hugging Face folder that translate alike.

Both exporters read the model's own modules (not checkpoint key strings), so a layer that
changes without its exporter fails the equality tests in tests/test_export.py.

CTranslate2 (`format=ctranslate2`): a `TransformerSpec` filled weight by weight, with the
position table written out (CTranslate2's own sinusoids start at position 1 and lay out
[sin | cos]), `add_source_eos` (mt encodes `pieces + </s>`) and layer-norm epsilon 1e-5.
`positions=rope` becomes CTranslate2's rotary self-attention over the whole head, half-split
(`rotary_interleave=False`), base 10000, with no position table (cross-attention has none, in
both); `positions=relative` its Shaw relative self-attention, whose `relative_position_keys`
and `_values` [2k+1, Dh] rows are indexed clip(j - i, -k, k) + k as mt's tables are.

Hugging Face (`format=huggingface`): pre-norm models go into `PegasusForConditionalGeneration`
(pre-norm layers, final encoder and decoder LayerNorms, positions from 0 in a saved table);
post-norm models into `MarianMTModel` (post-norm layers, no final norms, sinusoidal positions
it computes itself in [sin | cos] order: the residual channels are permuted to match, which
changes nothing else).
Both scale embeddings by sqrt(d_model) and tie the output layer to the target embedding, as mt
does. The tokenizer is `MarianTokenizer` over mt's own SentencePiece model(s) with a vocab.json
of its ids, so `AutoTokenizer` gives mt's ids (pad 0, unk 1, <s> 2, </s> 3) with no mt installed.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mt import __version__
from mt.checkpoint import load_checkpoint
from mt.config import ExportConfig, ModelConfig
from mt.corpus import file_sha256
from mt.decode.run import load_run
from mt.errors import MTError
from mt.files import check_parents, fault, is_write_fault, unchanged
from mt.model.attention import SelfAttention
from mt.model.layers import DecoderLayer, EncoderLayer
from mt.model.positions import ROPE_BASE
from mt.model.transformer import Seq2Seq
from mt.rundir import RunDir
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

log = logging.getLogger("mt.export")

FORMATS = ("ctranslate2", "huggingface")
CT2_QUANTIZATIONS = (
    "none", "int8", "int8_float32", "int16", "float16", "bfloat16", "int8_float16",
)  # fmt: skip
EXPORT_INFO = "mt_export.json"

# The name each format's refusals give it.
TARGETS = {"ctranslate2": "CTranslate2", "huggingface": "Hugging Face transformers"}
# What each exporter can hold: format -> model key -> the values it represents exactly.
# CTranslate2 has rotary (half-split) and Shaw relative self-attention; Marian and Pegasus
# (and M2M100) add absolute positions to the embeddings only.
_HELD_BY_BOTH: dict[str, tuple[Any, ...]] = {
    "activation": ("relu", "gelu"),
    "norm": ("pre", "post"),
}
_REPRESENTABLE: dict[str, dict[str, tuple[Any, ...]]] = {  # positions first (check_representable)
    "ctranslate2": {"positions": ("sinusoidal", "learned", "rope", "relative"), **_HELD_BY_BOTH},
    "huggingface": {"positions": ("sinusoidal", "learned"), **_HELD_BY_BOTH},
}
# Keys that change no computation at inference, or that every exporter copies as they are
# (max_relative_positions is nonzero with positions=relative only, which the formats check).
_STRUCTURAL = {
    "src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "n_layers_enc", "n_layers_dec",
    "d_ff", "dropout", "attn_dropout", "act_dropout", "max_positions", "share_embeddings",
    "pad_id", "max_relative_positions", *(k for held in _REPRESENTABLE.values() for k in held),
}  # fmt: skip


def missing_extra(package: str, what: str = "this") -> MTError:
    """The one sentence for a missing package of the export extra."""
    return MTError(
        f"{what} needs the {package} package: pip install 'mt[export]' "
        '(from a checkout: pip install -e ".[export]").'
    )


@dataclass
class Source:
    """The run being exported: its model in fp32 on CPU, tokenizers and provenance."""

    run: RunDir
    checkpoint: Path
    model: Seq2Seq
    model_args: dict[str, Any]
    src_tok: Tokenizer
    tgt_tok: Tokenizer
    normalize: str
    direction: str = "?"  # e.g. en-de, as the data was prepared

    @functools.cached_property
    def checkpoint_sha256(self) -> str:
        """Hex sha256 of the checkpoint file, read once."""
        return file_sha256(self.checkpoint)

    def results(self) -> dict[str, Any]:
        """results.json of the run (scores, steps), or {} when it has none."""
        if not self.run.results.is_file():
            return {}
        return json.loads(self.run.results.read_text(encoding="utf-8"))


def load_source(run_dir: str | Path, checkpoint: str | None) -> Source:
    """Load the run's checkpoint (as `mt translate` picks it) for export."""
    loaded = load_run(Path(run_dir), checkpoint, torch.device("cpu"))
    ckpt = load_checkpoint(loaded.checkpoint)
    return Source(
        RunDir(Path(run_dir)), loaded.checkpoint, loaded.model.float(), ckpt["model_args"],
        loaded.src_tok, loaded.tgt_tok, loaded.normalize_form,
        str(ckpt.get("data", {}).get("direction", "?")),
    )  # fmt: skip


def check_representable(model_args: dict[str, Any], fmt: str) -> None:
    """Refuse, naming the option, a model that format `fmt` (one of FORMATS) cannot hold
    exactly."""
    target, held = TARGETS[fmt], _REPRESENTABLE[fmt]
    defaults = {f.name: f.default for f in fields(ModelConfig)}
    for key, allowed in held.items():  # first: positions=relative names positions, not its k
        value = model_args.get(key, defaults.get(key))
        if value not in allowed:
            raise MTError(
                f"model.{key}={value} cannot be exported to {target}; it holds "
                f"model.{key}={' | '.join(map(str, allowed))}."
            )
    for key, value in model_args.items():
        if key not in _STRUCTURAL and value and value != defaults.get(key):
            raise MTError(f"model.{key}={value} cannot be exported to {target} yet.")


def _np(t: Tensor) -> Any:
    return t.detach().float().cpu().numpy()


def _positions(model: Seq2Seq, side: str) -> Tensor:
    """The position table [P, D] a stack adds to its embeddings (sinusoidal or learned)."""
    positions = getattr(model, side).embed.positions
    return positions.table if hasattr(positions, "table") else positions.weight


# --- CTranslate2 -----------------------------------------------------------------------------


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
    activation = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU}
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
        enc.position_encodings.encodings = _np(_positions(model, "encoder"))
        dec.position_encodings.encodings = _np(_positions(model, "decoder"))
    elif hasattr(enc, "position_encodings"):  # rope: the encoder spec still declares one
        del enc.position_encodings  # (CT2 ignores it once layers rotate); mt adds no table
    for layer_spec, layer in zip(enc.layer, model.encoder.layers, strict=True):
        _ct2_encoder_layer(layer_spec, layer)
    for layer_spec, layer in zip(dec.layer, model.decoder.layers, strict=True):
        _ct2_decoder_layer(layer_spec, layer)
    if hp["norm"] == "pre":
        _ct2_norm(enc.layer_norm, model.encoder.final_norm)
        _ct2_norm(dec.layer_norm, model.decoder.final_norm)
    dec.projection.weight = _np(model.decoder.embed.tokens.weight)  # tied, no bias
    spec.config.layer_norm_epsilon = 1e-5  # torch's LayerNorm default, which mt uses
    spec.config.add_source_eos = True  # mt encodes pieces + </s>
    spec.config.decoder_start_token = tgt_vocab[BOS_ID]
    spec.config.bos_token, spec.config.eos_token = tgt_vocab[BOS_ID], tgt_vocab[EOS_ID]
    spec.config.unk_token = tgt_vocab[UNK_ID]
    spec.register_source_vocabulary(src_vocab)
    spec.register_target_vocabulary(tgt_vocab)
    return spec


def _pieces(tok: Tokenizer) -> list[str]:
    return [tok.sp.id_to_piece(i) for i in range(tok.vocab_size)]


def write_ctranslate2(source: Source, out_dir: Path, quantization: str = "none") -> None:
    """Convert the source model into a CTranslate2 model folder `out_dir` (must not exist)."""
    vocabs = _pieces(source.src_tok), _pieces(source.tgt_tok)
    save_ctranslate2(ctranslate2_spec(source.model, source.model_args, *vocabs), out_dir,
                     quantization)  # fmt: skip


def save_ctranslate2(spec: Any, out_dir: Path, quantization: str = "none") -> None:
    """Validate, quantize and save a filled spec with CTranslate2's converter API."""
    from ctranslate2.converters.converter import Converter

    if quantization not in CT2_QUANTIZATIONS:
        raise MTError(
            f"quantization={quantization!r} is not one of {', '.join(CT2_QUANTIZATIONS)}."
        )

    class _Filled(Converter):
        def _load(self) -> Any:
            return spec

    quant = None if quantization == "none" else quantization
    _Filled().convert(str(out_dir), quantization=quant)


# --- Hugging Face ----------------------------------------------------------------------------


def _split_qkv(prefix: str, linear: nn.Linear, names: tuple[str, ...]) -> dict[str, Tensor]:
    """A fused [n*D, D] projection as n separate `prefix.<name>_proj` weights and biases."""
    out = {}
    parts = zip(names, linear.weight.chunk(len(names)), linear.bias.chunk(len(names)), strict=True)
    for name, weight, bias in parts:
        out[f"{prefix}.{name}_proj.weight"] = weight
        out[f"{prefix}.{name}_proj.bias"] = bias
    return out


def _hf_linear(name: str, linear: nn.Module) -> dict[str, Tensor]:
    return {f"{name}.weight": linear.weight, f"{name}.bias": linear.bias}


def _hf_encoder_layer(p: str, layer: EncoderLayer) -> dict[str, Tensor]:
    return {
        **_split_qkv(f"{p}.self_attn", layer.self_attn.qkv, ("q", "k", "v")),
        **_hf_linear(f"{p}.self_attn.out_proj", layer.self_attn.out),
        **_hf_linear(f"{p}.self_attn_layer_norm", layer.norm1),
        **_hf_linear(f"{p}.fc1", layer.ffn.fc1),
        **_hf_linear(f"{p}.fc2", layer.ffn.fc2),
        **_hf_linear(f"{p}.final_layer_norm", layer.norm2),
    }


def _hf_decoder_layer(p: str, layer: DecoderLayer) -> dict[str, Tensor]:
    return {
        **_split_qkv(f"{p}.self_attn", layer.self_attn.qkv, ("q", "k", "v")),
        **_hf_linear(f"{p}.self_attn.out_proj", layer.self_attn.out),
        **_hf_linear(f"{p}.self_attn_layer_norm", layer.norm1),
        **_hf_linear(f"{p}.encoder_attn.q_proj", layer.cross_attn.q),
        **_split_qkv(f"{p}.encoder_attn", layer.cross_attn.kv, ("k", "v")),
        **_hf_linear(f"{p}.encoder_attn.out_proj", layer.cross_attn.out),
        **_hf_linear(f"{p}.encoder_attn_layer_norm", layer.norm2),
        **_hf_linear(f"{p}.fc1", layer.ffn.fc1),
        **_hf_linear(f"{p}.fc2", layer.ffn.fc2),
        **_hf_linear(f"{p}.final_layer_norm", layer.norm3),
    }


def huggingface_weights(model: Seq2Seq, pre_norm: bool) -> dict[str, Tensor]:
    """mt's weights under the names of Pegasus (pre-norm) / Marian (post-norm)."""
    src_emb, tgt_emb = model.encoder.embed.tokens.weight, model.decoder.embed.tokens.weight
    weights = {
        "model.shared.weight": tgt_emb,
        "model.encoder.embed_tokens.weight": src_emb,
        "model.decoder.embed_tokens.weight": tgt_emb,
        "model.encoder.embed_positions.weight": _positions(model, "encoder"),
        "model.decoder.embed_positions.weight": _positions(model, "decoder"),
        "lm_head.weight": tgt_emb,
        "final_logits_bias": torch.zeros(1, tgt_emb.size(0)),
    }
    for i, layer in enumerate(model.encoder.layers):
        weights.update(_hf_encoder_layer(f"model.encoder.layers.{i}", layer))
    for i, layer in enumerate(model.decoder.layers):
        weights.update(_hf_decoder_layer(f"model.decoder.layers.{i}", layer))
    if pre_norm:
        weights.update(_hf_linear("model.encoder.layer_norm", model.encoder.final_norm))
        weights.update(_hf_linear("model.decoder.layer_norm", model.decoder.final_norm))
    return {name: t.detach().float().clone() for name, t in weights.items()}


def _marian_channels(weights: dict[str, Tensor], d_model: int) -> dict[str, Tensor]:
    """Reorder the residual stream's channels from mt's [sin, cos, sin, cos, ...] positions to
    Marian's [sin ... | cos ...], which Marian computes itself and never loads.

    Every weight that reads the residual stream is permuted on its input dimension, every one
    that writes it on its output dimension; LayerNorm commutes with a channel permutation, and
    the heads' own dimensions are untouched, so the model computes exactly the same function.
    """
    perm = torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])
    reads = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "fc1.weight", "embed_tokens.weight",
             "shared.weight", "lm_head.weight")  # fmt: skip
    writes = ("out_proj.weight", "out_proj.bias", "fc2.weight", "fc2.bias", "norm.weight",
              "norm.bias")  # fmt: skip
    out = {}
    for name, t in weights.items():
        if "embed_positions" in name:
            continue
        if name.endswith(reads):
            t = t[:, perm]
        elif name.endswith(writes):
            t = t[perm]
        out[name] = t.contiguous()
    return out


def huggingface_config(hp: dict[str, Any]) -> Any:
    """The transformers config that holds mt's architecture exactly (see the module doc)."""
    try:
        from transformers import MarianConfig, PegasusConfig
    except ImportError:
        raise missing_extra("transformers") from None
    check_representable(hp, "huggingface")
    pre_norm = hp["norm"] == "pre"
    if not pre_norm and hp["positions"] != "sinusoidal":
        raise MTError(
            f"model.positions={hp['positions']} with model.norm=post cannot be exported to "
            "Hugging Face transformers: its post-norm holder (Marian) computes sinusoidal "
            "positions itself."
        )
    if pre_norm and not hp["share_embeddings"]:
        raise MTError(
            "model.share_embeddings=false with model.norm=pre cannot be exported to Hugging Face "
            "transformers: its pre-norm holder (Pegasus) has one embedding for both sides."
        )
    common = dict(
        vocab_size=hp["tgt_vocab_size"], d_model=hp["d_model"],
        encoder_layers=hp["n_layers_enc"], decoder_layers=hp["n_layers_dec"],
        encoder_attention_heads=hp["n_heads"], decoder_attention_heads=hp["n_heads"],
        encoder_ffn_dim=hp["d_ff"], decoder_ffn_dim=hp["d_ff"],
        activation_function=hp["activation"], max_position_embeddings=hp["max_positions"],
        dropout=hp["dropout"], attention_dropout=hp["attn_dropout"],
        activation_dropout=hp["act_dropout"], scale_embedding=True,
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        decoder_start_token_id=BOS_ID, forced_eos_token_id=None, tie_word_embeddings=True,
        encoder_layerdrop=0.0, decoder_layerdrop=0.0,
    )  # fmt: skip
    if pre_norm:
        return PegasusConfig(**common)
    common["vocab_size"] = hp["src_vocab_size"]  # Marian's encoder side; decoder_vocab_size below
    return MarianConfig(
        **common,
        decoder_vocab_size=hp["tgt_vocab_size"],
        share_encoder_decoder_embeddings=hp["share_embeddings"],
    )


def _hf_model(source: Source) -> Any:
    from transformers import MarianMTModel, PegasusForConditionalGeneration

    config = huggingface_config(source.model_args)
    pre_norm = source.model_args["norm"] == "pre"
    model = (PegasusForConditionalGeneration if pre_norm else MarianMTModel)(config)
    weights = huggingface_weights(source.model, pre_norm)
    if not pre_norm:
        if not source.model_args["share_embeddings"]:  # Marian's own source embedding
            weights["model.shared.weight"] = weights["model.encoder.embed_tokens.weight"]
        weights = _marian_channels(weights, source.model_args["d_model"])
    result = model.load_state_dict(weights, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if pre_norm or "embed_positions" not in k]
    if unexpected or missing:
        raise RuntimeError(f"Hugging Face export: unexpected {unexpected}, missing {missing}")
    return model.eval()


def _hf_tokenizer_files(source: Source, out_dir: Path) -> None:
    """MarianTokenizer files over mt's own SentencePiece model(s), ids as mt's."""
    shutil.copyfile(source.src_tok.path, out_dir / "source.spm")
    shutil.copyfile(source.tgt_tok.path, out_dir / "target.spm")
    vocab = {piece: i for i, piece in enumerate(_pieces(source.src_tok))}
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    shared = source.src_tok.sha256() == source.tgt_tok.sha256()
    if not shared:
        target = {piece: i for i, piece in enumerate(_pieces(source.tgt_tok))}
        text = json.dumps(target, ensure_ascii=False)
        (out_dir / "target_vocab.json").write_text(text, encoding="utf-8")
    sp = source.tgt_tok.sp
    config = {
        "tokenizer_class": "MarianTokenizer",
        "separate_vocabs": not shared,
        "eos_token": sp.id_to_piece(EOS_ID),
        "unk_token": sp.id_to_piece(UNK_ID),
        "pad_token": sp.id_to_piece(PAD_ID),
        "model_max_length": source.model_args["max_positions"],
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def write_huggingface(source: Source, out_dir: Path) -> None:
    """A folder that `AutoModelForSeq2SeqLM` / `AutoTokenizer.from_pretrained` load."""
    model = _hf_model(source)
    model.generation_config.decoder_start_token_id = BOS_ID
    model.generation_config.max_length = source.model_args["max_positions"]
    model.save_pretrained(str(out_dir))
    _hf_tokenizer_files(source, out_dir)
    (out_dir / "README.md").write_text(model_card(source), encoding="utf-8")


def model_card(source: Source) -> str:
    """A hub model card: front matter, the model, its data, recipe and scores."""
    results, hp = source.results(), source.model_args
    manifest_dir = source.run.root
    direction = source.direction
    src, tgt = direction.split("-") if "-" in direction else ("", "")
    lines = ["---", "library_name: transformers", "pipeline_tag: translation"]
    lines += ["language:"] + [f"- {lang}" for lang in (src, tgt) if lang]
    lines += ["tags:", "- translation", "- mt", "---", "", f"# {manifest_dir.name}", ""]
    kind = "Pegasus (pre-norm)" if hp["norm"] == "pre" else "Marian (post-norm)"
    lines += [
        f"A {direction} Transformer trained with mt {__version__}, held in the transformers "
        f"{kind} class.",
        "",
        "```python",
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
        'tok = AutoTokenizer.from_pretrained("PATH")',
        'model = AutoModelForSeq2SeqLM.from_pretrained("PATH")',
        'out = model.generate(**tok(["A dog runs."], return_tensors="pt"), num_beams=5)',
        "print(tok.batch_decode(out, skip_special_tokens=True))",
        "```",
        "",
        "## Model",
        "",
        f"d_model {hp['d_model']}, {hp['n_layers_enc']}+{hp['n_layers_dec']} layers, "
        f"{hp['n_heads']} heads, FFN {hp['d_ff']}, {hp['activation']}, {hp['norm']}-norm, "
        f"{hp['positions']} positions, vocabulary {hp['tgt_vocab_size']}; input is expected in "
        f"Unicode {source.normalize}.",
        "",
        "## Training",
        "",
        f"Checkpoint `{source.checkpoint.name}` (sha256 {source.checkpoint_sha256[:16]}...), "
        f"step {results.get('step', '?')}, {results.get('minutes', 0):.1f} minutes.",
        "",
    ]
    return "\n".join(lines + _score_lines(results)) + "\n"


def _score_lines(results: dict[str, Any]) -> list[str]:
    scores = {k: v for k, v in results.items() if k.startswith(("test", "valid")) and v}
    if not scores:
        return ["## Scores", "", "No test scores were recorded in the run's results.json."]
    lines = ["## Scores", "", "| split | metric | score |", "|---|---|---|"]
    for key, value in scores.items():
        if isinstance(value, dict):
            for metric, score in value.items():
                lines.append(f"| {key} | {metric} | {score} |")
        else:
            lines.append(f"| {key} | | {value} |")
    return lines


# --- the stage -------------------------------------------------------------------------------


def export_info(source: Source, fmt: str, quantization: str) -> dict[str, Any]:
    return {
        "mt_version": __version__,
        "format": fmt,
        "quantization": quantization,
        "run_dir": str(source.run.root.resolve()),
        "checkpoint": str(source.checkpoint.resolve()),
        "checkpoint_sha256": source.checkpoint_sha256,
        "normalize": source.normalize,
        "model_args": source.model_args,
        "results": source.results(),
    }


def export(source: Source, out_dir: Path, fmt: str, quantization: str = "none") -> Path:
    """Write the export into a temp folder beside `out_dir`, then move it into place."""
    if fmt not in FORMATS:
        raise MTError(f"format={fmt!r} is not one of {', '.join(FORMATS)}.")
    if fmt == "huggingface" and quantization != "none":
        raise MTError("quantization applies to format=ctranslate2 only.")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
            _stage_and_swap(source, out_dir, Path(tmp), fmt, quantization)
    except (OSError, RuntimeError) as exc:
        if not is_write_fault(exc):
            raise
        raise fault(exc, out_dir, unchanged(out_dir)) from None
    return out_dir


def _stage_and_swap(source: Source, out_dir: Path, tmp: Path, fmt: str, quantization: str) -> None:
    """Write the export in `tmp`, then swap it with `out_dir`: the old export is removed only
    once the new one is in place."""
    staged = tmp / "export"
    if fmt == "ctranslate2":
        write_ctranslate2(source, staged, quantization)
        for tok in {source.src_tok.path, source.tgt_tok.path}:
            shutil.copyfile(tok, staged / tok.name)
    else:
        staged.mkdir()
        write_huggingface(source, staged)
    info = json.dumps(export_info(source, fmt, quantization), indent=2)
    (staged / EXPORT_INFO).write_text(info + "\n", encoding="utf-8")
    if out_dir.exists():
        out_dir.rename(tmp / "previous")  # removed with tmp
    staged.rename(out_dir)


def run_export(cfg: ExportConfig) -> Path:
    """`mt export`: refuse to replace a folder that is not an earlier export, then export."""
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise MTError(f"out_dir {out} is a file; name a folder (new, or an earlier export).")
    check_parents(out, "out_dir")
    if out.exists() and any(out.iterdir()) and not (out / EXPORT_INFO).is_file():
        raise MTError(f"out_dir {out} holds files that are not an mt export; choose another.")
    if out.exists() and not cfg.force and any(out.iterdir()):
        raise MTError(f"out_dir {out} holds an earlier export; add force=true to replace it.")
    source = load_source(cfg.run_dir, cfg.checkpoint)
    if "," in source.direction:
        raise MTError(
            f"data.directions: {cfg.run_dir} is multilingual ({source.direction}) and cannot be "
            "exported: its sources start with a language tag that no exported tokenizer adds. "
            "Translate it with `mt translate decode.tgt_lang=...` (or engine=ctranslate2)."
        )
    export(source, out, cfg.format, cfg.quantization)
    log.info("exported %s (%s) to %s", source.checkpoint, cfg.format, out)
    return out
