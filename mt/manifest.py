"""The data folder's `manifest.json` as types: what `mt prepare` wrote and `mt train` reads.

`Manifest` mirrors the JSON file field for field, so `dataclasses.asdict` writes it back
unchanged; `Vocab` is its SentencePiece part. Readers use attributes, never nested dict keys.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mt.errors import MTError
from mt.files import write_text

MANIFEST = "manifest.json"
FORMAT = "mt-data/1"


@dataclass
class Vocab:
    """The SentencePiece model(s) of a data folder, or the vocabulary files of the run whose
    tokenizer encoded it (tokenizer.from_run)."""

    joint: bool  # one model for both sides
    models: dict[str, str]  # side (src, tgt) -> model file name inside the data folder
    vocab_size: int  # pieces of the source model
    tgt_vocab_size: int  # pieces of the target model (= vocab_size when joint)
    sha256: dict[str, str]  # side -> hash of the model file
    from_run: str | None = None  # the run whose tokenizer files these are (tokenizer.from_run)

    def identity(self) -> dict[str, dict[str, str]]:
        """What tells two vocabularies apart: file names and hashes (the run's vocab.json)."""
        return {"models": dict(self.models), "sha256": dict(self.sha256)}


@dataclass
class Manifest:
    """Everything `mt prepare` records about a data folder.

    `splits` and `cleaning` are per-split reports (counts, length statistics, drops per
    reason); `config` is the resolved prepare config, kept for the record.
    """

    format: str
    mt_version: str
    source: dict[str, Any]
    direction: str
    src: str
    tgt: str
    normalize: str  # Unicode form the text was normalized to; translation input must match
    splits: dict[str, dict[str, Any]]
    cleaning: dict[str, dict[str, Any]]
    spm: Vocab
    files: list[str]
    config_hash: str
    config: dict[str, Any]
    timings_s: dict[str, float]
    directions: list[str] = dataclasses.field(default_factory=list)
    """The directions of a multilingual folder (data.directions), [] for one direction."""
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    """Target language -> the tag its sources start with (<2de>); {} for one direction."""
    src_tag: str | None = None
    """The language code every source starts with (data for an NLLB / M2M100 run), or None."""
    tgt_tag: str | None = None
    """The language code every target starts with, forced as the first output token."""

    def has_split(self, name: str) -> bool:
        return name in self.splits

    def pairs(self, split: str) -> int:
        """Pairs in a split after cleaning."""
        return int(self.splits[split]["pairs"])

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        """Parse the JSON object; manifests written before `normalize` existed take it from
        their config. Raises KeyError or TypeError when a field is missing or malformed."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {key: raw[key] for key in fields if key in raw}
        values.setdefault("normalize", raw["config"]["clean"]["normalize"])
        values["spm"] = Vocab(**raw["spm"])
        return cls(**values)

    def write(self, folder: Path) -> None:
        """Write `folder/manifest.json` atomically (the file that marks the folder complete)."""
        text = json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False) + "\n"
        write_text(folder / MANIFEST, text)


def read_manifest(folder: Path) -> Manifest | None:
    """The manifest of a data folder made by `mt prepare`, or None if there is none."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        return None
    try:
        return Manifest.from_dict(raw)
    except (KeyError, TypeError):
        return None


def load_manifest(folder: Path) -> Manifest:
    """The manifest of a data folder; MTError when there is none."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise MTError(f"data_dir {folder} has no manifest.json; run `mt prepare` first.")
    return manifest
