"""Typed schemas for every config group, registered with Hydra's ConfigStore; validation only.

Every default lives here, in a dataclass field; the YAML files under `configs/` hold presets and
overrides. Hydra merges YAML into these schemas, so a misspelled key or a wrong type is an error
that names the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


class ConfigError(ValueError):
    """A config value that type-checks but makes no sense; the message names the key."""


@dataclass
class DataConfig:
    """Where parallel text comes from and which direction to train."""

    name: str = "local"
    """Short name of the corpus; used in the default output directory."""
    hub_id: str | None = None
    """Hugging Face `datasets` id (or a local dataset folder) loaded with `load_dataset`."""
    hub_config: str | None = None
    """Dataset config name on the hub, e.g. `de-en` for wmt/wmt14."""
    path: str | None = None
    """Folder of local files: `{split}.{lang}[.gz]`, `{split}.tsv[.gz]` or `{split}.jsonl[.gz]`."""
    format: str = "auto"
    """Local file format: text | tsv | jsonl | auto (picked from the files present)."""
    src: str = "en"
    """Source language code (a column name, a file suffix, a key of the translation dict)."""
    tgt: str = "de"
    """Target language code."""
    train: str = "train"
    """Training split: a file stem locally, a split name on the hub."""
    valid: str | None = "valid"
    """Validation split (never filtered); null for none."""
    test: str | None = "test"
    """Test split (never filtered); null for none."""
    tsv_columns: list[str] | None = None
    """Language of each TSV column, e.g. [en, de]; null reads them from a header row."""
    max_train_pairs: int | None = None
    """Keep only the first N training pairs (quick experiments); null keeps all."""


@dataclass
class CleanConfig:
    """Cleaning applied to raw pairs; filters apply to the training split only."""

    normalize: str = "NFC"
    """Unicode normalization form: NFC | NFKC | NFD | NFKD | none."""
    max_words: int = 250
    """Drop training pairs with a side longer than this many whitespace-separated words."""
    max_ratio: float = 3.0
    """Drop training pairs whose longer side has more than this times the words of the other."""
    ratio_min_words: int = 5
    """The ratio filter applies only when the longer side has at least this many words."""
    dedup: bool = True
    """Drop exact duplicate pairs from the training split."""


@dataclass
class SpmConfig:
    """SentencePiece model trained on the cleaned training split."""

    vocab_size: int = 8000
    """Vocabulary size, special tokens included."""
    model_type: str = "unigram"
    """unigram | bpe."""
    joint: bool = True
    """One model for both languages (needed to share embeddings); false trains one per side."""
    character_coverage: float = 1.0
    """Share of characters covered by the vocabulary (0.9995 suits CJK)."""
    byte_fallback: bool = True
    """Spell unknown characters as UTF-8 bytes instead of <unk>."""
    user_defined_symbols: list[str] = field(default_factory=list)
    """Extra pieces never split, e.g. language tags like <2de>."""
    input_sentence_size: int = 2_000_000
    """Sentences sampled to train the model (all when the corpus is smaller)."""


@dataclass
class PrepareConfig:
    """`mt prepare`: raw parallel text -> cleaned, tokenized, binarized data directory."""

    data: DataConfig = field(default_factory=DataConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    spm: SpmConfig = field(default_factory=SpmConfig)
    out_dir: str = "data-bin/${data.name}.${data.src}-${data.tgt}"
    """Output data directory (manifest.json, SentencePiece model, binarized splits)."""
    force: bool = False
    """Rebuild even when the output is up to date."""
    workers: int = 0
    """Threads for SentencePiece training and encoding; 0 uses every core."""
    seed: int = 1
    """Seed for SentencePiece sampling."""


NORMALIZATION_FORMS = ("NFC", "NFKC", "NFD", "NFKD", "none")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}.")


def _check_positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}={value} must be positive.")


def validate_prepare(cfg: PrepareConfig) -> None:
    """Raise ConfigError naming the first key whose value makes no sense."""
    data, clean, spm = cfg.data, cfg.clean, cfg.spm
    if data.hub_id is None and data.path is None:
        raise ConfigError("set data.path (a folder of local files) or data.hub_id (a dataset id).")
    if data.src == data.tgt:
        raise ConfigError(f"data.src and data.tgt are both {data.src!r}; pick two languages.")
    _check_choice("data.format", data.format, ("auto", "text", "tsv", "jsonl"))
    _check_choice("clean.normalize", clean.normalize, NORMALIZATION_FORMS)
    _check_choice("spm.model_type", spm.model_type, ("unigram", "bpe"))
    _check_positive("clean.max_words", clean.max_words)
    _check_positive("clean.max_ratio", clean.max_ratio)
    _check_positive("spm.input_sentence_size", spm.input_sentence_size)
    if spm.vocab_size < 8 + len(spm.user_defined_symbols):
        raise ConfigError(f"spm.vocab_size={spm.vocab_size} is too small.")
    if not 0.0 < spm.character_coverage <= 1.0:
        raise ConfigError(f"spm.character_coverage={spm.character_coverage} must be in (0, 1].")
    if data.tsv_columns is not None and sorted(data.tsv_columns) != sorted({*data.tsv_columns}):
        raise ConfigError(f"data.tsv_columns={data.tsv_columns} names a language twice.")


def register_configs() -> None:
    """Register the stage schemas so `defaults: [<stage>_schema]` in YAML finds them."""
    cs = ConfigStore.instance()
    cs.store(name="prepare_schema", node=PrepareConfig)
