"""A run's tokenizer and vocabulary, reused: `mt prepare tokenizer.from_run=RUN_DIR` encodes a
corpus with them, and `mt train init_from=RUN_DIR` starts from the run's weights on such data.

`read_run_vocab` opens a run folder written by `mt train` (SentencePiece models) or `mt import`
(`VocabTokenizer` vocabulary files over the source's SentencePiece models), checks that its
tokenizer files are the ones its vocab.json names, and loads the checkpoint a run decodes with.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mt.checkpoint import load_checkpoint
from mt.errors import MTError
from mt.rundir import INFERENCE_CHECKPOINTS, RunDir
from mt.tokenizer import AnyTokenizer, load_tokenizer

SIDES = ("src", "tgt")


@dataclass
class RunVocab:
    """A run folder's vocabulary, its tokenizers and the checkpoint they were checked against."""

    run: RunDir
    key: str
    """The config key that named the run (tokenizer.from_run, init_from), for the sentences."""
    checkpoint: Path
    ckpt: dict[str, Any]
    """The loaded checkpoint (model, model_args, vocab, data, and `pretrained` for an import)."""
    identity: dict[str, dict[str, str]]
    """RUN_DIR/vocab.json: file name and sha256 of each side's tokenizer (`Vocab.identity`)."""
    tokenizers: dict[str, AnyTokenizer]

    @property
    def models(self) -> dict[str, str]:
        """Side -> the tokenizer file's name (a SentencePiece model, or a vocabulary file)."""
        return dict(self.identity["models"])

    @property
    def joint(self) -> bool:
        """One vocabulary on both sides: one file, or two that list the same pieces (Marian's
        shared vocabulary has a vocabulary file per side, as its tokenizer has)."""
        src, tgt = self.tokenizers["src"], self.tokenizers["tgt"]
        return self.models["src"] == self.models["tgt"] or src.pieces() == tgt.pieces()

    @property
    def normalize(self) -> str:
        """The Unicode form the run's data was cleaned to, which new data must match."""
        if "data" in self.ckpt:
            return str(self.ckpt["data"]["normalize"])
        return str(self.ckpt.get("config", {}).get("clean", {}).get("normalize", "NFC"))

    @property
    def codes(self) -> dict[str, str]:
        """Language -> its code piece, for a run whose inputs and outputs start with language
        codes (an imported NLLB or M2M100 model: eng_Latn -> eng_Latn, en -> __en__); {} for
        any other run."""
        data = self.ckpt.get("data", {})
        return dict(data.get("tags", {})) if data.get("tags_on") == "target" else {}

    def language_codes(
        self, src: str, tgt: str, src_lang: str | None, tgt_lang: str | None
    ) -> tuple[str, str] | None:
        """The code pieces the sources and the targets of a src-tgt corpus start with: the
        given src_lang / tgt_lang (a language or a code of the run), else the run's codes of
        `src` and `tgt` (tokenizer.src_lang and tokenizer.tgt_lang are the keys); None for a
        run without codes, which takes neither key.

        Raises:
            MTError: a key given for a run without codes, or a language the run has no code for.
        """
        codes = self.codes
        if not codes:
            for name, value in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
                if value is not None:
                    raise MTError(
                        f"tokenizer.{name}={value}: {self.key}={self.run.root} has no language "
                        "codes; leave tokenizer.src_lang and tokenizer.tgt_lang unset."
                    )
            return None
        found = []
        for side, lang, given in (("src", src, src_lang), ("tgt", tgt, tgt_lang)):
            name = lang if given is None else given
            if name in codes:
                found.append(codes[name])
            elif name in codes.values():
                found.append(name)
            elif given is None:
                raise MTError(
                    f"{self.key}={self.run.root} starts every sentence with a language code and "
                    f"has none for data.{side}={lang}: set tokenizer.{side}_lang to its code "
                    "(e.g. eng_Latn, deu_Latn for NLLB)."
                )
            else:
                raise MTError(
                    f"tokenizer.{side}_lang={given} is not a language code of "
                    f"{self.key}={self.run.root}."
                )
        return found[0], found[1]

    def install(self, folder: Path) -> dict[str, str]:
        """Copy every file the tokenizers read into `folder`; returns side -> file name."""
        for path in {p for tok in self.tokenizers.values() for p in tok.files()}:
            shutil.copyfile(path, folder / path.name)
        return self.models


def _checkpoint(run: RunDir, key: str) -> Path:
    """The checkpoint the run decodes with: final.pt, best.pt, then last.pt."""
    for name in INFERENCE_CHECKPOINTS:
        if (run.checkpoints / name).is_file():
            return run.checkpoints / name
    names = ", ".join(INFERENCE_CHECKPOINTS)
    raise MTError(
        f"{key}={run.root} has no checkpoint (checkpoints/ holds none of {names}); train it "
        "or import it first."
    )


def read_run_vocab(run_dir: str | Path, key: str) -> RunVocab:
    """Open the run folder `run_dir`, named by config key `key`, for reuse.

    Raises:
        MTError: A path that is not a run folder, a run without vocab.json or checkpoint, a
            tokenizer file that is not the one vocab.json names; one sentence each.
    """
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise MTError(
            f"{key}={run_dir} is not a folder; name a run folder of mt train or mt import."
        )
    if not run.vocab.is_file():
        raise MTError(f"{key}={run_dir} has no vocab.json; name a run of mt train or mt import.")
    checkpoint = _checkpoint(run, key)
    ckpt = load_checkpoint(checkpoint)
    identity = json.loads(run.vocab.read_text(encoding="utf-8"))
    if ckpt.get("vocab") != identity:
        raise MTError(f"{run.vocab} is not the vocabulary of {checkpoint}.")
    tokenizers = {}
    for side in SIDES:
        tok = load_tokenizer(run.spm(identity["models"][side]))
        if tok.sha256() != identity["sha256"][side]:
            raise MTError(f"{tok.path} is not the tokenizer file {run.vocab} names.")
        tokenizers[side] = tok
    return RunVocab(run, key, checkpoint, ckpt, identity, tokenizers)
