"""SentencePiece wrapper: training, batch encode/decode, and the sole owner of the special ids.

The ids of pad, unk, bos and eos are fixed here; the model, the loss and the decoder rely on them.
`Tokenizer` is a SentencePiece model trained by mt, whose own ids are mt's; `VocabTokenizer` is
an imported model's SentencePiece model whose pieces reach mt's ids through a stored vocabulary
(`mt.convert`); `load_tokenizer` opens either.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from mt.errors import MTError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def language_tag(lang: str) -> str:
    """The piece that asks a multilingual model for target language `lang`: <2de>."""
    return f"<2{lang}>"


def train_sentencepiece(
    sentences: Iterable[str],
    model_prefix: Path,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    byte_fallback: bool = True,
    user_defined_symbols: Sequence[str] = (),
    input_sentence_size: int = 1_000_000,
    seed: int = 1,
    threads: int = 1,
) -> Path:
    """Train a SentencePiece model on already-normalized sentences; returns the .model path.

    `sentences` may be any iterable (a generator over files): SentencePiece pulls them one
    at a time and keeps a uniform sample of `input_sentence_size`, so Python holds none.

    Normalization is the identity: text arrives cleaned (NFC, single spaces), so that decoding
    an encoded sentence gives back exactly the cleaned text. `vocab_size` is an upper bound:
    a corpus too small for it gets the largest vocabulary it supports.
    """
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_prefix=str(model_prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            user_defined_symbols=list(user_defined_symbols),
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            normalization_rule_name="identity",
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            hard_vocab_limit=False,
            num_threads=threads,
            minloglevel=2,
        )
    except RuntimeError as exc:
        # SentencePiece reports as "INTERNAL: file(line) [check] message": keep the message
        reason = str(exc).strip().splitlines()[0].split("] ")[-1]
        needed = re.search(r"required_chars\. \d+ vs (\d+)", reason)
        if needed:  # the one failure a user meets in practice: name the keys that fix it
            raise MTError(
                f"spm.vocab_size={vocab_size} is smaller than the {needed.group(1)} distinct "
                f"characters that spm.character_coverage={character_coverage} keeps: raise "
                "spm.vocab_size or lower spm.character_coverage (byte_fallback covers the rest)."
            ) from None
        raise MTError(f"SentencePiece training failed: {reason}") from None
    return model_prefix.with_suffix(".model")


class Tokenizer:
    """A trained SentencePiece model: batch encode to ids, batch decode to text."""

    def __init__(self, model_path: str | Path) -> None:
        self.path = Path(model_path)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as exc:
            raise MTError(f"{self.path} is not a readable SentencePiece model ({exc}).") from None
        specials = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if specials != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise MTError(
                f"{self.path}: special ids {specials} differ from the pad/unk/bos/eos ids 0-3 "
                "that mt relies on; train it with `mt prepare`."
            )

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: list[str], threads: int = 1) -> list[list[int]]:
        """Ids of each text, without bos/eos, encoded on `threads` C++ threads."""
        return self.sp.encode(texts, out_type=int, num_threads=threads)

    def encode_tagged(self, texts: list[str], threads: int = 1) -> list[list[int]]:
        """Ids of lines that start with a language tag and a space ("<2de> A man ..."): the
        tag's own id, then the rest encoded as a sentence (SentencePiece would spend a "▁"
        piece on the space before a user-defined symbol)."""
        split = [text.partition(" ") for text in texts]
        tags = {head: self.piece_id(head) for head, _, _ in split}
        rests = self.encode([rest for _, _, rest in split], threads)
        return [[tags[head], *ids] for (head, _, _), ids in zip(split, rests, strict=True)]

    def piece_id(self, piece: str) -> int:
        """The id of a whole piece (a language tag); MTError when the model lacks it."""
        i = self.sp.piece_to_id(piece)
        if i == UNK_ID and piece != self.sp.id_to_piece(UNK_ID):
            raise MTError(f"{self.path} has no piece {piece!r}.")
        return i

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Text of each id sequence; special ids are skipped."""
        return self.sp.decode(ids)

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def piece_to_id(self, piece: str) -> int:
        """The id of a piece; UNK_ID for one the model lacks."""
        return self.sp.piece_to_id(piece)

    def pieces(self) -> list[str]:
        """Every piece, by id."""
        return [self.sp.id_to_piece(i) for i in range(self.vocab_size)]

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def files(self) -> list[Path]:
        """The files this tokenizer reads."""
        return [self.path]


VOCAB_FORMAT = "mt-vocab/1"


class VocabTokenizer:
    """An imported model's tokenizer: SentencePiece cuts text into pieces, and a stored
    vocabulary gives each piece its mt id (Marian's vocab.json, NLLB's fairseq-offset ids,
    permuted so that pad, unk, bos and eos sit at mt's ids 0-3).

    The vocabulary file (JSON, `mt.convert` writes it beside the SentencePiece model) holds:
    `format` (VOCAB_FORMAT), `spm` (the model that encodes), `decode_spm` (the one whose
    decoder joins pieces: Marian with one shared vocabulary decodes with its source model),
    `spm_sha256` (of `spm`), `pieces` (the piece of each mt id), `special` (ids that decoding
    skips, as Hugging Face's `skip_special_tokens` does: unk and language codes included) and
    `codes` (whether a leading `>>xx<<` in the text is a piece of its own, as MarianTokenizer
    reads it). A piece outside the vocabulary encodes as unk, as Hugging Face's tokenizers do.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            spec = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MTError(f"{self.path} is not a readable vocabulary file ({exc}).") from None
        if spec.get("format") != VOCAB_FORMAT:
            raise MTError(f"{self.path} is not an mt vocabulary file ({VOCAB_FORMAT}).")
        folder = self.path.parent
        spm_path = folder / spec["spm"]
        if not spm_path.is_file():
            raise MTError(f"{spm_path} is missing: {self.path} needs its SentencePiece model.")
        if hashlib.sha256(spm_path.read_bytes()).hexdigest() != spec["spm_sha256"]:
            raise MTError(f"{spm_path} is not the SentencePiece model {self.path} was made with.")
        self.sp = spm.SentencePieceProcessor(model_file=str(spm_path))
        self._spm_files = [spm_path, folder / spec["decode_spm"]]
        self.decoder_sp = spm.SentencePieceProcessor(model_file=str(self._spm_files[1]))
        self._pieces: list[str] = list(spec["pieces"])
        self._ids = {piece: i for i, piece in reversed(list(enumerate(self._pieces)))}
        self._special = set(spec["special"]) | {PAD_ID, UNK_ID, BOS_ID, EOS_ID}
        self._codes = bool(spec.get("codes", False))

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def _split_code(self, text: str) -> tuple[list[int], str]:
        """A leading `>>xx<<` language code as its id, and the rest of the text."""
        if self._codes and text.startswith(">>") and (end := text.find("<<")) != -1:
            return [self._ids.get(text[: end + 2], UNK_ID)], text[end + 2 :]
        return [], text

    def encode(self, texts: list[str], threads: int = 1) -> list[list[int]]:
        """Ids of each text, without bos/eos."""
        split = [self._split_code(text) for text in texts]
        pieces = self.sp.encode([rest for _, rest in split], out_type=str, num_threads=threads)
        ids = self._ids
        return [
            [*code, *(ids.get(p, UNK_ID) for p in seq)]
            for (code, _), seq in zip(split, pieces, strict=True)
        ]

    def encode_tagged(self, texts: list[str], threads: int = 1) -> list[list[int]]:
        """As `Tokenizer.encode_tagged`: a leading tag's own id, then the rest."""
        split = [text.partition(" ") for text in texts]
        tags = {head: self.piece_id(head) for head, _, _ in split}
        rests = self.encode([rest for _, _, rest in split], threads)
        return [[tags[head], *ids] for (head, _, _), ids in zip(split, rests, strict=True)]

    def piece_id(self, piece: str) -> int:
        """The id of a whole piece (a language code); MTError when the vocabulary lacks it."""
        if piece not in self._ids:
            raise MTError(f"{self.path} has no piece {piece!r}.")
        return self._ids[piece]

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Text of each id sequence; special ids (unk and language codes too) are skipped."""
        special, pieces = self._special, self._pieces
        texts = []
        for seq in ids:
            kept = [pieces[i] for i in seq if i not in special]
            texts.append(self.decoder_sp.decode_pieces(kept).replace("\u2581", " ").strip())
        return texts

    def id_to_piece(self, i: int) -> str:
        return self._pieces[i]

    def piece_to_id(self, piece: str) -> int:
        """The id of a piece; UNK_ID for one the vocabulary lacks."""
        return self._ids.get(piece, UNK_ID)

    def pieces(self) -> list[str]:
        """Every piece, by mt id."""
        return list(self._pieces)

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def files(self) -> list[Path]:
        """The files this tokenizer reads: the vocabulary file and its SentencePiece models."""
        return [self.path, *dict.fromkeys(self._spm_files)]


AnyTokenizer = Tokenizer | VocabTokenizer


def load_tokenizer(path: str | Path) -> AnyTokenizer:
    """A run's tokenizer: a vocabulary file (.json) of an imported model, else SentencePiece."""
    return VocabTokenizer(path) if Path(path).suffix == ".json" else Tokenizer(path)
