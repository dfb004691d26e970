"""Marian (OPUS-MT) <-> mt: a Hugging Face `MarianMTModel` and its `MarianTokenizer` as an mt
model and vocabulary files, and back.

Marian is post-norm with no final norms, [sin | cos] sinusoids from position 0, optionally
scaled embeddings, relu or swish, an output bias (`final_logits_bias`), ids from `vocab.json`
(one joint vocabulary over `source.spm` / `target.spm`, or a second `target_vocab.json` with
`separate_vocabs`), eos 0, pad the last id, and the decoder starting from pad
(`mt.convert.pretrained` maps those ids onto mt's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from mt.convert.pretrained import (
    MARIAN,
    IdMap,
    Imported,
    banned_ids,
    check_tied,
    common_args,
    layer_weights,
    load_layers,
    model_bias,
    mt_pieces,
    output_bias,
    pieces_by_id,
    refuse,
    sha256,
    vocab_spec,
)
from mt.model import transformer
from mt.model.transformer import Seq2Seq


def _id_map(vocab: dict[str, int], size: int, tokenizer: Any, start: int | None) -> IdMap:
    pad, unk = vocab[str(tokenizer.pad_token)], vocab[str(tokenizer.unk_token)]
    eos = vocab[str(tokenizer.eos_token)]
    return IdMap.build(size, pad, unk, pad if start is None else start, eos)


def import_marian(hf_model: Any, tokenizer: Any) -> Imported:
    """A loaded `MarianMTModel` and its `MarianTokenizer` as an `Imported` mt model."""
    cfg, what = hf_model.config, MARIAN
    if type(tokenizer).__name__ != "MarianTokenizer":
        raise refuse(what, f"its tokenizer is a {type(tokenizer).__name__}, not MarianTokenizer")
    shared = bool(cfg.share_encoder_decoder_embeddings)
    src_size = cfg.vocab_size
    tgt_size = src_size if shared else (cfg.decoder_vocab_size or src_size)
    if cfg.pad_token_id != tokenizer.pad_token_id or cfg.eos_token_id != tokenizer.eos_token_id:
        raise refuse(what, "config.pad_token_id / eos_token_id differ from its tokenizer's")
    src_vocab = dict(tokenizer.encoder)
    tgt_vocab = dict(tokenizer.target_encoder) if tokenizer.separate_vocabs else src_vocab
    src_map = _id_map(src_vocab, src_size, tokenizer, None)
    tgt_map = _id_map(tgt_vocab, tgt_size, tokenizer, cfg.decoder_start_token_id)
    if shared:  # one embedding: the source reads it through the target's map
        src_map = tgt_map
    state = {k: v.detach().float() for k, v in hf_model.state_dict().items()}
    tgt_embed = "model.decoder.embed_tokens.weight"
    check_tied(state, tgt_embed, what)
    args = common_args(cfg, what) | dict(
        norm="post", sinusoid="marian", position_offset=0, share_embeddings=shared,
        src_vocab_size=len(src_map.rows), tgt_vocab_size=len(tgt_map.rows), pad_id=0,
    )  # fmt: skip
    model = transformer(**args)
    model.decoder.embed.tokens.weight.data.copy_(tgt_map.to_mt(state[tgt_embed]))
    if not shared:
        src = src_map.to_mt(state["model.encoder.embed_tokens.weight"])
        model.encoder.embed.tokens.weight.data.copy_(src)
    load_layers(model, state)
    banned = banned_ids(hf_model.generation_config, what)
    bias = state["final_logits_bias"][0] if "final_logits_bias" in state else None
    model.output_bias = output_bias(tgt_map, bias, banned)
    kept = {row: 0.0 if bias is None else float(bias[row]) for row in banned}
    source_spm, target_spm = (Path(p) for p in tokenizer.spm_files)
    # Hugging Face decodes a shared vocabulary with the source model (use_source_tokenizer)
    decode_spm = "target.spm" if tokenizer.separate_vocabs else "source.spm"
    codes = not tokenizer.separate_vocabs  # MarianTokenizer reads >>xx<< codes then only
    vocab_files = {
        side: (f"{side}.vocab.json", vocab_spec(
            mt_pieces(id_map, pieces_by_id(vocab, id_map.model_size, what)),
            list(range(4)) + [id_map.rows.index(r) for r in _special_rows(tokenizer, vocab)],
            spm_name, sha256(spm_path), decode_spm, codes and side == "src",
        ))
        for side, id_map, vocab, spm_name, spm_path in (
            ("src", src_map, src_vocab, "source.spm", source_spm),
            ("tgt", tgt_map, tgt_vocab, "target.spm", target_spm),
        )
    }  # fmt: skip
    src_lang, tgt_lang = tokenizer.source_lang or "", tokenizer.target_lang or ""
    return Imported(
        family=what, model=model, model_args=args, src_map=src_map, tgt_map=tgt_map,
        vocab_files=vocab_files,
        spm_files={"source.spm": str(source_spm), "target.spm": str(target_spm)},
        data={"direction": f"{src_lang}-{tgt_lang}", "normalize": "none", "tags": {}},
        config={"config": cfg.to_dict(), "generation_config": hf_model.generation_config.to_dict(),
                "tokenizer": {"separate_vocabs": bool(tokenizer.separate_vocabs)},
                "banned": kept},
        tokenizer=tokenizer,
    )  # fmt: skip


def _special_rows(tokenizer: Any, vocab: dict[str, int]) -> list[int]:
    """Model rows of the tokenizer's special tokens that decoding skips (as
    `skip_special_tokens` does), among those this vocabulary holds."""
    return [vocab[t] for t in map(str, tokenizer.all_special_tokens) if t in vocab]


def marian_weights(
    model: Seq2Seq, src_map: IdMap, tgt_map: IdMap, shared: bool, banned: dict[int, float]
) -> dict[str, Tensor]:
    """mt's weights as a `MarianMTModel` state dict (`import_marian` backwards); `banned` maps
    the model ids the import banned to their own bias values."""
    tgt = tgt_map.to_model(model.decoder.embed.tokens.weight.detach().float())
    weights = layer_weights(model) | {
        "model.decoder.embed_tokens.weight": tgt, "lm_head.weight": tgt,
    }  # fmt: skip
    if shared:
        weights |= {"model.shared.weight": tgt, "model.encoder.embed_tokens.weight": tgt}
    else:
        src = src_map.to_model(model.encoder.embed.tokens.weight.detach().float())
        weights["model.encoder.embed_tokens.weight"] = src
    if model.output_bias is not None:
        weights["final_logits_bias"] = model_bias(model.output_bias, tgt_map, banned)[None]
    return weights
