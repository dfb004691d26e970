"""format=huggingface: a run as a transformers folder that translates as mt does, with a model card.

Pre-norm models go into `PegasusForConditionalGeneration` (pre-norm layers, final encoder and
decoder LayerNorms, positions from 0 in a saved table); post-norm models into `MarianMTModel`
(post-norm layers, no final norms, sinusoidal positions it computes itself in [sin | cos] order:
the residual channels are permuted to match, which changes nothing else). Names and layouts come
from `mt.convert.hf_layout`.
Both scale embeddings by sqrt(d_model) and tie the output layer to the target embedding, as mt
does. The tokenizer is `MarianTokenizer` over mt's own SentencePiece model(s) with a vocab.json
of its ids, so `AutoTokenizer` gives mt's ids (pad 0, unk 1, <s> 2, </s> 3) with no mt installed.
A run made by `mt import` goes back to the class it came from instead (`mt.convert.reexport`).
"""

from __future__ import annotations

import json
import operator
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mt import __version__
from mt.config import DecodeConfig
from mt.convert import hf_layout as hf
from mt.convert.reexport import write_pretrained
from mt.convert.source import Source, check_representable, missing_extra, pieces, positions_table
from mt.decode.run import tuned_decoding
from mt.errors import MTError
from mt.model.transformer import Seq2Seq
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID


def _weight_and_bias(name: str, module: nn.Module) -> dict[str, Tensor]:
    return {f"{name}.weight": module.weight, f"{name}.bias": module.bias}


def _layer_weights(
    prefix: str, layer: nn.Module, names: dict[str, tuple[str, ...]]
) -> dict[str, Tensor]:
    """One layer's weights under their BART-family names (`hf.ENCODER_LAYER` or
    `hf.DECODER_LAYER`), mt's fused [n*D, D] projections split into their n parts."""
    out = {}
    for path, parts in names.items():
        module = operator.attrgetter(path)(layer)
        n = len(parts)
        chunks = zip(parts, module.weight.chunk(n), module.bias.chunk(n), strict=True)
        for part, weight, bias in chunks:
            out[f"{prefix}.{part}.weight"] = weight
            out[f"{prefix}.{part}.bias"] = bias
    return out


def huggingface_weights(model: Seq2Seq, pre_norm: bool) -> dict[str, Tensor]:
    """mt's weights under the names of Pegasus (pre-norm) / Marian (post-norm)."""
    src_emb, tgt_emb = model.encoder.embed.tokens.weight, model.decoder.embed.tokens.weight
    weights = {
        hf.SHARED: tgt_emb,
        hf.embed_tokens("encoder"): src_emb,
        hf.embed_tokens("decoder"): tgt_emb,
        hf.embed_positions("encoder"): positions_table(model, "encoder"),
        hf.embed_positions("decoder"): positions_table(model, "decoder"),
        hf.LM_HEAD: tgt_emb,
        hf.FINAL_LOGITS_BIAS: torch.zeros(1, tgt_emb.size(0)),
    }
    for i, layer in enumerate(model.encoder.layers):
        weights.update(_layer_weights(hf.layer_prefix("encoder", i), layer, hf.ENCODER_LAYER))
    for i, layer in enumerate(model.decoder.layers):
        weights.update(_layer_weights(hf.layer_prefix("decoder", i), layer, hf.DECODER_LAYER))
    if pre_norm:
        for side in ("encoder", "decoder"):
            weights.update(_weight_and_bias(hf.final_norm(side), getattr(model, side).final_norm))
    return {name: t.detach().float().clone() for name, t in weights.items()}


def _marian_channels(weights: dict[str, Tensor], d_model: int) -> dict[str, Tensor]:
    """The weights in Marian's residual channel order, without the position tables Marian
    computes itself and never loads."""
    kept = {name: t for name, t in weights.items() if "embed_positions" not in name}
    return hf.permute_channels(kept, hf.marian_channel_order(d_model))


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
    common = {field: hp[key] for field, key in hf.CONFIG_FIELDS.items()}
    common.update(
        vocab_size=hp["tgt_vocab_size"], scale_embedding=True,
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
            weights[hf.SHARED] = weights[hf.embed_tokens("encoder")]
        weights = _marian_channels(weights, source.model_args["d_model"])
    result = model.load_state_dict(weights, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if pre_norm or "embed_positions" not in k]
    if unexpected or missing:
        raise RuntimeError(f"Hugging Face export: unexpected {unexpected}, missing {missing}")
    return model.eval()


def _tokenizer_files(source: Source, out_dir: Path) -> None:
    """MarianTokenizer files over mt's own SentencePiece model(s), ids as mt's."""
    shutil.copyfile(source.src_tok.path, out_dir / hf.SOURCE_SPM)
    shutil.copyfile(source.tgt_tok.path, out_dir / hf.TARGET_SPM)
    vocab = {piece: i for i, piece in enumerate(pieces(source.src_tok))}
    (out_dir / hf.VOCAB).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    shared = source.src_tok.sha256() == source.tgt_tok.sha256()
    if not shared:
        target = {piece: i for i, piece in enumerate(pieces(source.tgt_tok))}
        text = json.dumps(target, ensure_ascii=False)
        (out_dir / hf.TARGET_VOCAB).write_text(text, encoding="utf-8")
    tok = source.tgt_tok
    config = {
        "tokenizer_class": "MarianTokenizer",
        "separate_vocabs": not shared,
        "eos_token": tok.id_to_piece(EOS_ID),
        "unk_token": tok.id_to_piece(UNK_ID),
        "pad_token": tok.id_to_piece(PAD_ID),
        "model_max_length": source.model_args["max_positions"],
    }
    text = json.dumps(config, indent=2)
    (out_dir / hf.TOKENIZER_CONFIG).write_text(text, encoding="utf-8")


def write_huggingface(source: Source, out_dir: Path) -> None:
    """A folder that `AutoModelForSeq2SeqLM` / `AutoTokenizer.from_pretrained` load; an
    imported run goes back into the class and tokenizer it came from."""
    if source.pretrained is not None:
        write_pretrained(
            source.model, source.pretrained, source.run.root, out_dir, source.tgt_first
        )
        return
    model = _hf_model(source)
    model.generation_config.decoder_start_token_id = BOS_ID
    model.generation_config.max_length = source.model_args["max_positions"]
    # the run's tuned beam (transformers' length_penalty is another formula than mt's GNMT
    # lenpen, so only the beam carries over; the model card names both)
    model.generation_config.num_beams = _tuned(source).beam
    model.save_pretrained(str(out_dir))
    _tokenizer_files(source, out_dir)
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
        'out = model.generate(**tok(["A dog runs."], return_tensors="pt"))',
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
        f"`generate` searches with beam {_tuned(source).beam} by default, the beam mt tuned "
        f"for this run on validation; mt decodes it with beam {_tuned(source).beam} and GNMT "
        f"length penalty {_tuned(source).lenpen:g}.",
        "",
        "## Training",
        "",
        f"Checkpoint `{source.checkpoint.name}` (sha256 {source.checkpoint_sha256[:16]}...), "
        f"step {results.get('step', '?')}, {results.get('minutes', 0):.1f} minutes.",
        "",
    ]
    return "\n".join(lines + _score_lines(results)) + "\n"


def _tuned(source: Source) -> DecodeConfig:
    """The search settings the run decodes with (RUN_DIR/decoding.json, else mt's defaults)."""
    return tuned_decoding(source.run.root, DecodeConfig())


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
