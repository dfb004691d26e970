"""M2M100 / NLLB <-> mt: a Hugging Face `M2M100ForConditionalGeneration` with its NLLB (or
M2M100) tokenizer as an mt model and vocabulary files, and back.

M2M100 is pre-norm with final norms, sinusoids in fairseq's layout counted from the padding id
+ 1, scaled embeddings, fairseq's ids (bos 0, pad 1, eos 2, unk 3, the SentencePiece pieces
one higher, language codes at the end), a source `[src_lang, pieces..., eos]`, and decoding
that starts from eos with the target language forced as the first token: mt's run records the
codes as target tags (`decode.tgt_lang=deu_Latn` forces one) and the source code its inputs
start with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from mt.convert.pretrained import (
    M2M100,
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
from mt.errors import MTError
from mt.model import transformer
from mt.model.transformer import Seq2Seq

SPM_FILE = "sentencepiece.bpe.model"


def language_codes(tokenizer: Any) -> dict[str, str]:
    """Language -> its code piece: NLLB's codes are their own names (deu_Latn), M2M100's
    `__de__` for de."""
    if hasattr(tokenizer, "lang_code_to_token"):  # M2M100Tokenizer
        return dict(tokenizer.lang_code_to_token)
    specials = set(map(str, tokenizer.all_special_tokens))
    named = {"<s>", "</s>", "<unk>", "<pad>", "<mask>"}
    return {code: code for code in sorted(specials - named)}


def model_ids(tokenizer: Any) -> dict[str, int]:
    """Every piece of the tokenizer and its model id, language codes included (M2M100's own
    tokenizer leaves them out of `get_vocab`)."""
    ids = dict(tokenizer.get_vocab())
    ids.update(getattr(tokenizer, "lang_token_to_id", {}))
    ids.update(tokenizer.added_tokens_encoder)
    return ids


def _spm_file(tokenizer: Any, folder: Path) -> Path:
    """The SentencePiece model that cuts text into the tokenizer's pieces."""
    own = getattr(tokenizer, "spm_file", None) or getattr(tokenizer, "vocab_file", None)
    for path in (own, folder / SPM_FILE):
        if path and Path(path).is_file():
            return Path(path)
    raise MTError(
        f"{folder} lacks {SPM_FILE}: mt encodes M2M100 / NLLB text with the model's "
        "SentencePiece model, which the hub repositories hold; copy it into the folder."
    )


def import_m2m100(hf_model: Any, tokenizer: Any, folder: Path, src_lang: str | None) -> Imported:
    """A loaded `M2M100ForConditionalGeneration` and its tokenizer as an `Imported` mt model."""
    cfg, what = hf_model.config, M2M100
    if getattr(tokenizer, "legacy_behaviour", False):
        raise refuse(what, "its tokenizer has legacy_behaviour=true (codes after the source)")
    size = cfg.vocab_size
    vocab = model_ids(tokenizer)
    pieces = pieces_by_id(vocab, size, what)
    unk = vocab[str(tokenizer.unk_token)]
    id_map = IdMap.build(size, cfg.pad_token_id, unk, cfg.decoder_start_token_id, cfg.eos_token_id)
    state = {k: v.detach().float() for k, v in hf_model.state_dict().items()}
    check_tied(state, "model.shared.weight", what)
    args = common_args(cfg, what) | dict(
        norm="pre", sinusoid="fairseq", position_offset=cfg.pad_token_id + 1,
        share_embeddings=True, src_vocab_size=len(id_map.rows),
        tgt_vocab_size=len(id_map.rows), pad_id=0,
    )  # fmt: skip
    model = transformer(**args)
    model.decoder.embed.tokens.weight.data.copy_(id_map.to_mt(state["model.shared.weight"]))
    load_layers(model, state)
    for stack in ("encoder", "decoder"):
        norm = getattr(model, stack).final_norm
        norm.weight.data.copy_(state[f"model.{stack}.layer_norm.weight"])
        norm.bias.data.copy_(state[f"model.{stack}.layer_norm.bias"])
    banned = banned_ids(hf_model.generation_config, what)
    model.output_bias = output_bias(id_map, None, banned)
    codes = language_codes(tokenizer)
    src_lang = src_lang or tokenizer.src_lang
    if src_lang not in codes and src_lang not in codes.values():
        raise MTError(f"src_lang={src_lang} is not a language of {what}'s tokenizer.")
    src_code = codes.get(src_lang, src_lang)
    special = list(range(4)) + [id_map.rows.index(vocab[t]) for t in
                                map(str, tokenizer.all_special_tokens) if t in vocab]  # fmt: skip
    spm_path = _spm_file(tokenizer, folder)
    spec = vocab_spec(mt_pieces(id_map, pieces), special, SPM_FILE, sha256(spm_path), SPM_FILE)
    return Imported(
        family=what, model=model, model_args=args, src_map=id_map, tgt_map=id_map,
        vocab_files={"src": ("vocab.mt.json", spec), "tgt": ("vocab.mt.json", spec)},
        spm_files={SPM_FILE: str(spm_path)},
        data={"direction": f"{src_lang}-*", "normalize": "none", "tags": codes,
              "tags_on": "target", "src_tag": src_code},
        config={"config": cfg.to_dict(), "generation_config": hf_model.generation_config.to_dict(),
                "banned": {row: 0.0 for row in banned}},
        tokenizer=tokenizer,
    )  # fmt: skip


def m2m100_weights(model: Seq2Seq, id_map: IdMap, banned: dict[int, float]) -> dict[str, Tensor]:
    """mt's weights as an `M2M100ForConditionalGeneration` state dict (`import_m2m100`
    backwards)."""
    embed = id_map.to_model(model.decoder.embed.tokens.weight.detach().float())
    weights = layer_weights(model) | {
        "model.shared.weight": embed, "model.encoder.embed_tokens.weight": embed,
        "model.decoder.embed_tokens.weight": embed, "lm_head.weight": embed,
    }  # fmt: skip
    for stack in ("encoder", "decoder"):
        norm = getattr(model, stack).final_norm
        weights[f"model.{stack}.layer_norm.weight"] = norm.weight.detach().float().clone()
        weights[f"model.{stack}.layer_norm.bias"] = norm.bias.detach().float().clone()
    if model.output_bias is not None:  # M2M100 has no bias: only banned ids and extra rows
        bias = model_bias(model.output_bias, id_map, banned)
        if bias.abs().max() > 0:
            raise MTError(f"the model's output bias cannot be exported to {M2M100}: it has none.")
    return weights
