"""What importing a Hugging Face translation model shares across families: the id mapping that
keeps mt's special ids, the checks and refusals of a BART-family config, the layer weights in
both directions, and `Imported`.

mt's pad, unk, bos and eos sit at ids 0-3 (`mt.tokenizer`); Marian and M2M100 put theirs
elsewhere and start decoding from pad (Marian) or eos (M2M100), which mt's search calls bos. An
import therefore reorders the model's vocabulary: `IdMap.rows[i]` is the model row that mt id i
reads. mt's 0-3 read the model's pad, unk, decoder-start and eos rows; the other ids follow in
the model's order. Where the decoder start is already pad or eos, mt's bos row is a copy of that
row (the only extra row) and its output bias is -inf, so it is never emitted and every log-prob
equals the model's. `IdMap.inverse` gives each model row back the mt row that plays its part in
the model (bos for Marian's pad, which starts decoding; eos for M2M100's eos), so a re-export of
an untouched import holds exactly the source's tensors.
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mt.convert import hf_layout as hf
from mt.errors import MTError
from mt.model.transformer import Seq2Seq
from mt.tokenizer import BOS_ID, PAD_ID, VOCAB_FORMAT

# The names of the Hugging Face models mt imports and exports back, by family.
MARIAN, M2M100 = "MarianMTModel", "M2M100ForConditionalGeneration"
# The run folder's copy of the source's Hugging Face tokenizer (its save_pretrained files).
TOKENIZER_DIR = "hf_tokenizer"


@dataclass(frozen=True)
class IdMap:
    """mt ids -> model rows for one side's vocabulary.

    Args:
        rows: Model row of each mt id [V'].
        model_size: V, the model's vocabulary size.
    """

    rows: tuple[int, ...]
    model_size: int

    @classmethod
    def build(cls, model_size: int, pad: int, unk: int, start: int, eos: int) -> IdMap:
        """mt's pad, unk, bos, eos from the model's pad, unk, decoder-start and eos rows, then
        every other row in the model's order."""
        specials = (pad, unk, start, eos)
        rest = [r for r in range(model_size) if r not in specials]
        return cls((*specials, *rest), model_size)

    @property
    def extra(self) -> list[int]:
        """mt ids whose model row another mt id already reads: mt's bos where the decoder starts
        from pad or eos (any other repeat, the later id)."""
        seen: set[int] = set()
        out = []
        for i in [i for i in range(len(self.rows)) if i != BOS_ID] + [BOS_ID]:
            if self.rows[i] in seen:
                out.append(i)
            seen.add(self.rows[i])
        return sorted(out)

    @property
    def ids(self) -> list[int]:
        """The mt id of each model row [V]: the one that is not extra (what the model's ids
        become in mt's terms)."""
        extra, out = set(self.extra), [-1] * self.model_size
        for i, r in enumerate(self.rows):
            if i not in extra:
                out[r] = i
        return out

    def _canonical(self, i: int) -> int:
        """The mt id that is not extra among those reading mt id i's model row."""
        extra = set(self.extra)
        return next(j for j, r in enumerate(self.rows) if r == self.rows[i] and j not in extra)

    @property
    def inverse(self) -> list[int]:
        """The mt id each model row is exported from [V]: where two mt ids read one row, the
        one the model uses that row as (any id before bos, bos before pad)."""
        order = [PAD_ID, BOS_ID] + [i for i in range(len(self.rows)) if i not in (PAD_ID, BOS_ID)]
        inverse = [-1] * self.model_size
        for i in order:  # later ids overwrite: pad first, bos next, the rest last
            inverse[self.rows[i]] = i
        return inverse

    def first(self, x: Tensor) -> Tensor:
        """mt rows [V', ...] with each extra row replaced by the row of the earlier id that
        reads the same model row (`to_model(first(bias))` exports a bias without the extra
        rows' -inf)."""
        x = x.clone()
        for i in self.extra:
            x[i] = x[self._canonical(i)]
        return x

    def to_mt(self, x: Tensor) -> Tensor:
        """Model rows [V, ...] -> mt rows [V', ...]."""
        return x[torch.tensor(self.rows)]

    def to_model(self, x: Tensor) -> Tensor:
        """mt rows [V', ...] -> model rows [V, ...]."""
        return x[torch.tensor(self.inverse)]

    def to_json(self) -> dict[str, Any]:
        return {"rows": list(self.rows), "model_size": self.model_size}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IdMap:
        return cls(tuple(data["rows"]), int(data["model_size"]))


@dataclass
class Imported:
    """A Hugging Face model made into mt's terms, ready to be written as a run folder.

    Args:
        family: MARIAN or M2M100.
        model: The mt model holding the weights.
        model_args: The builder arguments that rebuild `model`.
        src_map, tgt_map: The id maps of the two sides (one object when shared).
        vocab_files: Vocabulary file name -> its JSON (`mt.tokenizer.VocabTokenizer`), by side.
        spm_files: SentencePiece files to copy into the run folder, by their name there.
        data: What the run says about its languages (`direction`, `tags`, `src_lang`).
        config: The source's config and generation config as dicts (for the manifest and a
            re-export).
        tokenizer: The source's Hugging Face tokenizer, saved into the run (TOKENIZER_DIR) for
            an export back to its class.
    """

    family: str
    model: Seq2Seq
    model_args: dict[str, Any]
    src_map: IdMap
    tgt_map: IdMap
    vocab_files: dict[str, tuple[str, dict[str, Any]]]
    spm_files: dict[str, str]
    data: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None


def output_bias(tgt_map: IdMap, model_bias: Tensor | None, banned: list[int]) -> Tensor:
    """The mt output bias [V']: the model's bias per row (zero without one), -inf at mt's extra
    rows and at the model ids in `banned` (bad words the model's generation config bans)."""
    bias = torch.zeros(tgt_map.model_size) if model_bias is None else model_bias.float().clone()
    bias[banned] = float("-inf")
    mt_bias = tgt_map.to_mt(bias)
    mt_bias[tgt_map.extra] = float("-inf")
    return mt_bias


# --- what every BART-family import checks and shares ---------------------------------------

# Hugging Face activation names -> mt's
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "swish", "silu": "swish"}


def refuse(what: str, why: str) -> MTError:
    """The one sentence for a model mt cannot hold, naming the config key."""
    return MTError(f"{what} cannot be imported: {why}.")


def common_args(cfg: Any, what: str) -> dict[str, Any]:
    """The builder arguments a BART-style config (Marian, M2M100) gives, after refusing what mt's
    Transformer cannot represent, naming the key."""
    act = cfg.activation_function
    if act not in ACTIVATIONS:
        raise refuse(what, f"activation_function={act} (mt has relu, gelu and swish)")
    for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"),
                     ("encoder_ffn_dim", "decoder_ffn_dim")):  # fmt: skip
        if getattr(cfg, enc) != getattr(cfg, dec):
            raise refuse(what, f"{enc}={getattr(cfg, enc)} differs from {dec}={getattr(cfg, dec)}")
    if cfg.d_model % cfg.encoder_attention_heads:
        raise refuse(what, f"d_model={cfg.d_model} is not divisible by encoder_attention_heads")
    return dict(
        d_model=cfg.d_model, n_heads=cfg.encoder_attention_heads,
        n_layers_enc=cfg.encoder_layers, n_layers_dec=cfg.decoder_layers,
        d_ff=cfg.encoder_ffn_dim, dropout=cfg.dropout, attn_dropout=cfg.attention_dropout,
        act_dropout=cfg.activation_dropout, activation=ACTIVATIONS[act],
        max_positions=cfg.max_position_embeddings, positions="sinusoidal",
        scale_embeddings=bool(cfg.scale_embedding), output_bias=True,
    )  # fmt: skip


def banned_ids(generation_config: Any, what: str) -> list[int]:
    """Single-token `bad_words_ids` of a generation config (OPUS-MT bans pad); longer ones are
    refused."""
    bad = getattr(generation_config, "bad_words_ids", None) or []
    if any(len(words) != 1 for words in bad):
        raise refuse(what, "generation_config.bad_words_ids holds a sequence of several tokens")
    return [words[0] for words in bad]


def check_tied(state: dict[str, Tensor], embed: str, what: str) -> None:
    """Refuse an output layer that is not the target embedding (mt ties them)."""
    if "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], state[embed]):
        raise refuse(what, "tie_word_embeddings=false (mt ties the output layer to the embedding)")


def pieces_by_id(vocab: dict[str, int], size: int, what: str) -> list[str]:
    """The piece of each model row; rows the vocabulary does not name get a placeholder."""
    if max(vocab.values()) >= size:
        raise refuse(what, f"its vocabulary has ids beyond the model's {size} rows")
    pieces = [f"<unused:{i}>" for i in range(size)]
    for piece, i in vocab.items():
        pieces[i] = piece
    return pieces


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_bias(bias: Tensor, tgt_map: IdMap, banned: dict[int, float]) -> Tensor:
    """mt's output bias [V'] as the model's [V]: the extra rows dropped, and each banned id's
    own value (recorded at import) in place of its -inf."""
    out = tgt_map.to_model(tgt_map.first(bias.detach().float()))
    for row, value in banned.items():
        out[int(row)] = value
    return out


# --- layer weights: Hugging Face BART-family names (`mt.convert.hf_layout`) <-> mt modules ------


def _stacks(model: Seq2Seq) -> list[tuple[str, nn.Module, dict[str, tuple[str, ...]]]]:
    """(name prefix, mt layer, name table) of every encoder and decoder layer."""
    return [
        (hf.layer_prefix(side, i), layer, table)
        for side, table in (("encoder", hf.ENCODER_LAYER), ("decoder", hf.DECODER_LAYER))
        for i, layer in enumerate(getattr(model, side).layers)
    ]


def load_layers(model: Seq2Seq, state: dict[str, Tensor]) -> None:
    """Copy every encoder and decoder layer of a BART-family state dict into mt's, the q / k / v
    parts stacked into mt's fused projections."""
    for prefix, layer, table in _stacks(model):
        for path, parts in table.items():
            module = operator.attrgetter(path)(layer)
            for what in ("weight", "bias"):
                stacked = torch.cat([state[f"{prefix}.{part}.{what}"] for part in parts])
                getattr(module, what).data.copy_(stacked)


def layer_weights(model: Seq2Seq) -> dict[str, Tensor]:
    """mt's layers under BART-family names (`load_layers` backwards), as fp32 copies."""
    out = {}
    for prefix, layer, table in _stacks(model):
        for path, parts in table.items():
            module = operator.attrgetter(path)(layer)
            for what in ("weight", "bias"):
                chunks = getattr(module, what).detach().float().chunk(len(parts))
                for part, chunk in zip(parts, chunks, strict=True):
                    out[f"{prefix}.{part}.{what}"] = chunk.clone()
    return out


def vocab_spec(
    pieces: list[str],
    special: list[int],
    spm_name: str,
    spm_sha256: str,
    decode_spm: str,
    codes: bool = False,
) -> dict[str, Any]:
    """The JSON of a `mt.tokenizer.VocabTokenizer` vocabulary file."""
    return {
        "format": VOCAB_FORMAT, "spm": spm_name, "spm_sha256": spm_sha256,
        "decode_spm": decode_spm, "codes": codes, "special": sorted(set(special)),
        "pieces": pieces,
    }  # fmt: skip


def mt_pieces(id_map: IdMap, model_pieces: list[str]) -> list[str]:
    """The piece of each mt id; mt's extra rows get a name of their own (`<s>` where the model
    lacks it, else `<mt:start>`), so that pieces stay unique for CTranslate2's vocabularies."""
    pieces = [model_pieces[r] for r in id_map.rows]
    for i in id_map.extra:
        pieces[i] = "<s>" if "<s>" not in model_pieces else "<mt:start>"
    return pieces
