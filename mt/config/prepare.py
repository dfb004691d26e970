"""Schemas of `mt prepare`: the data, clean and spm groups and `PrepareConfig` that holds them."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    directions: list[str] = field(default_factory=list)
    """Several directions in one model, e.g. [en-de, en-fr] (read from the same files or
    corpus): each source starts with its target's tag (<2de>, <2fr>), a SentencePiece piece of
    its own; data.src and data.tgt are then not read. [] = the one direction src-tgt.
    Target languages must differ: the tag names the target."""


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
    input_sentence_size: int = 1_000_000
    """Sentences sampled to train the model (all when the corpus is smaller). SentencePiece's
    memory grows linearly with it; the default keeps `mt prepare` within a 4 GB machine
    (`python scripts/bench_prepare.py` measures it; docs/experiments.md has the figures)."""


@dataclass
class TokenizerConfig:
    """Where the data's tokenizer comes from: SentencePiece trained here (spm), or a run's."""

    from_run: str | None = None
    """A run folder (written by `mt train` or `mt import`) whose tokenizer(s) and vocabulary encode
    the data instead (for `mt train init_from=` that run); the spm group is then unused and
    clean.normalize becomes the run's. null: train SentencePiece here."""
    src_lang: str | None = None
    """With a from_run that has language codes (an imported NLLB or M2M100 model): the
    language or code every source starts with (eng_Latn; M2M100: en or __en__). null: data.src,
    when the run has a code for it."""
    tgt_lang: str | None = None
    """As src_lang, for the code every target starts with (deu_Latn), which decoding forces as
    the first output token. null: data.tgt, when the run has a code for it."""


@dataclass
class PrepareConfig:
    """`mt prepare`: raw parallel text -> cleaned, tokenized, binarized data directory."""

    data: DataConfig = field(default_factory=DataConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    spm: SpmConfig = field(default_factory=SpmConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    out_dir: str = "data-bin/${data.name}.${data.src}-${data.tgt}"
    """Output data directory (manifest.json, SentencePiece model, binarized splits)."""
    force: bool = False
    """Rebuild even when the output is up to date."""
    workers: int = 0
    """Threads for SentencePiece training and encoding; 0 uses every core."""
    seed: int = 1
    """Seed for SentencePiece sampling."""
