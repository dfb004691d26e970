"""Typed schemas for every config group, registered with Hydra's ConfigStore; validation only.

Every default lives here, in a dataclass field; the YAML files under `configs/` hold presets and
overrides. Hydra merges YAML into these schemas, so a misspelled key or a wrong type is an error
that names the key. `model_preset` reads a configs/model/ preset the same way without Hydra.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


def _config_dir() -> Path:
    """The Hydra config tree: mt/configs in an installed package (a wheel maps the repository's
    configs/ there), else configs/ beside the package in a source checkout or editable install."""
    shipped = Path(str(importlib.resources.files("mt").joinpath("configs")))
    return shipped if shipped.is_dir() else Path(__file__).resolve().parent.parent / "configs"


CONFIG_DIR = _config_dir()


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
    memory grows with it, about 2.4 GB per million sentences of 4-30 words: 2,000,000 peaked
    at 4.9 GB, so the default is 1,000,000 (2.5 GB), which keeps prepare under 4 GB."""


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


@dataclass
class ModelConfig:
    """Transformer hyperparameters; names match the builder `mt.model.transformer`."""

    d_model: int = 512
    """Width of embeddings and of every residual stream."""
    n_heads: int = 8
    """Attention heads; must divide d_model."""
    n_layers_enc: int = 6
    """Encoder layers."""
    n_layers_dec: int = 6
    """Decoder layers."""
    d_ff: int = 2048
    """Inner width of the feed-forward blocks."""
    dropout: float = 0.1
    """Dropout on embeddings and residual branches."""
    attn_dropout: float = 0.0
    """Dropout on attention weights."""
    act_dropout: float = 0.0
    """Dropout after the feed-forward activation."""
    activation: str = "relu"
    """relu | gelu."""
    norm: str = "pre"
    """pre (LayerNorm before each block, default) | post (the original paper)."""
    positions: str = "sinusoidal"
    """sinusoidal | learned (added to the embeddings) | rope (rotary queries and keys in
    self-attention, GPT-NeoX half-split layout, base 10000) | relative (Shaw et al. 2018 clipped
    relative keys and values in self-attention; set max_relative_positions)."""
    max_positions: int = 1024
    """Longest sequence in tokens (learned positions; longer inputs are truncated)."""
    share_embeddings: bool = True
    """Tie source, target and output embeddings (needs a joint vocabulary)."""
    max_relative_positions: int = 0
    """positions=relative: distances clip at +-this many tokens (> 0); 0 otherwise."""
    attn_window: int = 0
    """Self-attention sees only this many positions either side (decoder: back); 0 = all."""


@dataclass
class TrainLoopConfig:
    """The optimization loop: batches, schedule, precision, cadence, stopping."""

    max_tokens: int = 4096
    """Padded tokens per batch (the longer side of each pair), per device."""
    update_freq: int = 1
    """Batches accumulated into one optimizer step."""
    max_steps: int = 0
    """Stop after this many optimizer steps; 0 for no limit."""
    max_epochs: int = 0
    """Stop after this many epochs; 0 for no limit."""
    max_minutes: float = 0.0
    """Stop after this much wall-clock training time; 0 for no limit."""
    lr: float = 7e-4
    """Peak learning rate, reached at the end of warmup."""
    warmup_steps: int = 4000
    """Linear warmup steps before the decay."""
    schedule: str = "inverse_sqrt"
    """inverse_sqrt (lr * sqrt(warmup / step)) | linear (decays to 0 at train.max_steps, or sooner
    where train.max_minutes ends the run first: at the pace so far, the steps that fit in it)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay of linear weights."""
    clip_norm: float = 1.0
    """Clip the gradient norm to this; 0 disables clipping."""
    label_smoothing: float = 0.1
    """Label smoothing epsilon."""
    precision: str = "auto"
    """auto | bf16 | fp16 | fp32; auto picks bf16 where the device multiplies bf16 natively, else
    fp32 (bf16 on a CPU without native bf16 matmuls is refused)."""
    device: str = "auto"
    """auto | cpu | cuda (auto: cuda when available)."""
    seed: int = 1
    """Seed for initialization, dropout and batch order."""
    valid_every: int = 1000
    """Validate (loss, greedy BLEU) and checkpoint every N steps; 0: only at the end."""
    valid_bleu: bool = True
    """Greedy-decode the validation set and report BLEU at each validation."""
    patience: int = 0
    """Stop after this many validations without a better BLEU (loss if valid_bleu=false); 0 off."""
    keep_last: int = 5
    """Step checkpoints kept besides last.pt and best.pt."""
    average_last: int = 0
    """At the end, average the last N step checkpoints into averaged.pt; 0 skips it."""
    log_every: int = 100
    """Log training scalars every N steps."""
    threads: int = 0
    """CPU threads for PyTorch; 0 keeps its default (all cores)."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    max_bad_steps: int = 5
    """Stop after this many consecutive steps with a non-finite loss or gradient."""
    fallback_model: str = ""
    """A model preset (configs/model/) to train instead when the configured model, timed for a
    few updates on this machine before training, would make fewer than
    train.fallback_below_steps updates in train.max_minutes. The preset's sizes (d_model,
    n_heads, layers, d_ff) replace the model's; its other settings stay. The choice is logged and
    written to the run's config.yaml; a resumed run keeps the model it started with. Empty: off."""
    fallback_below_steps: int = 0
    """See train.fallback_model."""


@dataclass
class TrainConfig:
    """`mt train`: a prepared data folder -> a run folder with checkpoints and logs."""

    data_dir: str | None = None
    """Prepared data folder; null prepares `data` first (cached) into prepare_dir."""
    run_dir: str = "runs/${data.name}.${data.src}-${data.tgt}"
    """Run folder: checkpoints/, TensorBoard events, train.log, config.yaml."""
    data: DataConfig = field(default_factory=DataConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    spm: SpmConfig = field(default_factory=SpmConfig)
    prepare_dir: str = "data-bin/${data.name}.${data.src}-${data.tgt}"
    """Where `data` is prepared when data_dir is null."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)


@dataclass
class DecodeConfig:
    """Search settings of `mt translate` and `mt eval`."""

    beam: int = 5
    """Beam size; 1 is greedy search (its own fast path)."""
    nbest: int = 1
    """Hypotheses written per input line (at most beam); >1 writes `line<TAB>score<TAB>text`."""
    lenpen: float = 1.0
    """GNMT length penalty exponent alpha: score = logprob / ((5 + len) / 6) ** alpha."""
    max_len_a: float = 1.2
    """Longest output = max_len_a * source tokens + max_len_b."""
    max_len_b: int = 10
    """See max_len_a."""
    max_tokens: int = 4096
    """Source tokens (padded) per batch."""
    batch_size: int = 64
    """Sentences per batch at most."""
    buffer_lines: int = 2000
    """Input lines read, sorted by length and translated at a time (memory stays flat)."""
    inter_threads: int = 1
    """Batches decoded at once on CPU, each on 1/inter_threads of the CPU threads (as in
    CTranslate2): more throughput where one batch's small matmuls keep the cores from being
    busy. Beam and greedy search of engine=torch; sampling decodes one batch at a time."""
    sampling: bool = False
    """Sample instead of searching (back-translation); uses topk, topp, temperature."""
    topk: int = 0
    """Sample among the k most likely tokens; 0 for no limit."""
    topp: float = 1.0
    """Sample within the smallest set of tokens whose probability reaches topp."""
    temperature: float = 1.0
    """Sampling temperature."""
    seed: int = 1
    """Seed of sampling."""
    prefix: str | None = None
    """File of target prefixes, one per input line (empty: none): each output starts with its
    line's prefix and continues from there."""
    constraints: str | None = None
    """File of lexical constraints, one line per input line: tab-separated target phrases that
    must all appear in that line's output, in any order (empty: none). Beam search only."""
    ensemble_weights: list[float] | None = None
    """With checkpoint=[a.pt,b.pt,...]: one weight per checkpoint (default: equal)."""
    no_repeat_ngram: int = 0
    """N > 0: no output repeats an n-gram of N tokens (beam and greedy)."""
    tgt_lang: str | None = None
    """Target language of a multilingual run (one trained with data.directions): its tag
    (<2fr>) starts every source. A bilingual run accepts only its own target, or null."""
    alignment: bool = False
    """Append `<TAB>i-j ...` Pharaoh links (source i, output j) from cross-attention."""
    alignment_unit: str = "piece"
    """piece | word: what the alignment indices count."""
    alignment_layer: int = -1
    """Decoder layer whose cross-attention (heads averaged) aligns and is drawn; -1 the last."""
    attention_dir: str | None = None
    """Write a PNG of each of the first attention_lines outputs' cross-attention here."""
    attention_lines: int = 20
    """How many input lines get an attention picture."""
    shortlist: int = 0
    """K > 0: score only a shortlist of output pieces per batch (faster on CPU): the K most
    frequent target pieces of the run's training data, each source piece's
    shortlist_per_source most likely others, and eos (mt/shortlist.py); 0: whole vocabulary.
    Beam and greedy search of one checkpoint (engine=torch), not sampling."""
    shortlist_per_source: int = 20
    """With decode.shortlist: target pieces added per source piece of a batch (0 to 256)."""


@dataclass
class TranslateConfig:
    """`mt translate`: a trained run -> translations of text files or stdin."""

    run_dir: str = "???"
    """Run folder written by `mt train` (checkpoints and SentencePiece model)."""
    checkpoint: Any = None
    """Checkpoint file; null picks final.pt, else best.pt, else last.pt of run_dir; a list
    ([a.pt,b.pt]) decodes with the ensemble of those models (one vocabulary)."""
    input: Any = "-"
    """Input file, a list of files ([a.txt,b.txt]), or - for stdin."""
    output: str = "-"
    """Output file, or - for stdout."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    device: str = "auto"
    """auto | cpu | cuda."""
    precision: str = "auto"
    """auto | bf16 | fp16 | fp32 | int8 (auto: bf16 where the GPU or CPU has native bf16, else
    fp32; int8: dynamic int8 linear layers, CPU only)."""
    threads: int = 0
    """CPU threads for PyTorch; 0 keeps its default."""
    input_format: str = "text"
    """text | tsv (`source<TAB>target prefix` per line)."""
    engine: str = "torch"
    """torch (mt's own search) | ctranslate2 (an export of the run, made and cached in
    RUN_DIR/ctranslate2/; needs the export extra)."""


@dataclass
class EvalConfig:
    """`mt eval`: sacreBLEU scores of hypothesis files, or of a run translating a test set."""

    hyp: Any = None
    """Hypothesis file, or a list of files to compare ([a.txt,b.txt]; the first is the baseline)."""
    ref: Any = None
    """Reference file, or a list of reference files."""
    run_dir: str | None = None
    """Translate `src` with this run first (then hyp is where translations are saved)."""
    src: str | None = None
    """Source file to translate with run_dir."""
    output: str | None = None
    """Where to save the translations of src (default: RUN_DIR/<src name>.hyp)."""
    checkpoint: Any = None
    """Checkpoint of run_dir to use, or a list of them (an ensemble; see mt translate)."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    report: str | None = None
    """Also write the scores as JSON to this file."""
    metrics: list[str] = field(default_factory=lambda: ["bleu", "bleu_lc", "chrf", "ter"])
    """Metrics to compute: bleu (cased), bleu_lc (lowercased, as `sacrebleu -lc`), chrf, ter."""
    bootstrap_samples: int = 1000
    """Paired bootstrap resamples when comparing systems."""
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0
    engine: str = "torch"
    """torch | ctranslate2 (see mt translate)."""


@dataclass
class ExportConfig:
    """`mt export`: a trained run -> a CTranslate2 model or a Hugging Face folder."""

    run_dir: str = "???"
    """Run folder written by `mt train`."""
    checkpoint: str | None = None
    """Checkpoint file; null picks it as mt translate does (final.pt, best.pt, last.pt)."""
    format: str = "ctranslate2"
    """ctranslate2 | huggingface."""
    out_dir: str = "???"
    """Folder to write; an earlier export there is replaced only with force=true."""
    quantization: str = "none"
    """CTranslate2 weights: none | int8 | int8_float32 | int16 | float16 | bfloat16 |
    int8_float16."""
    force: bool = False
    """Replace an earlier export in out_dir."""


@dataclass
class ServeOptions:
    """Batching and limits of the `mt serve` HTTP server (the `serve.*` keys)."""

    batch_window_ms: float = 5.0
    """After a request arrives, wait this long for others to decode in the same batch."""
    max_batch_sentences: int = 64
    """Sentences collected into one batch at most (one request larger than this runs alone)."""
    max_chars: int = 2000
    """Characters per sentence at most; a longer one is refused with 413."""
    max_sentences: int = 64
    """Sentences per request at most; more are refused with 413."""
    max_beam: int = 8
    """Largest beam a request may ask for (decode.beam is the default)."""
    timeout_s: float = 30.0
    """A request not answered within this many seconds gets 504."""
    max_queue: int = 256
    """Requests waiting for the decoder at most; over it new ones get 503."""
    max_body_bytes: int = 1_000_000
    """Request body size at most; a larger body is refused with 413."""
    api_key: str | None = None
    """Required key (`Authorization: Bearer KEY` or `X-API-Key: KEY`); null reads the
    MT_SERVE_API_KEY environment variable, and no key there leaves the server open."""


@dataclass
class ServeConfig:
    """`mt serve`: a trained run behind an HTTP API (POST /translate) with dynamic batching."""

    run_dir: str = "???"
    """Run folder written by `mt train`."""
    checkpoint: str | None = None
    """Checkpoint file; null picks it as mt translate does (final.pt, best.pt, last.pt)."""
    host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 listens on every interface."""
    port: int = 8080
    """TCP port to listen on; 0 picks a free one (the logged URL shows which)."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    serve: ServeOptions = field(default_factory=ServeOptions)
    device: str = "auto"
    """auto | cpu | cuda."""
    precision: str = "auto"
    """auto | bf16 | fp16 | fp32 | int8 (see mt translate)."""
    threads: int = 0
    """CPU threads for PyTorch; 0 keeps its default."""
    engine: str = "torch"
    """torch | ctranslate2 (see mt translate)."""


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
    targets = [direction_pair(d)[1] for d in data.directions]
    if len(set(targets)) != len(targets):
        raise ConfigError(
            f"data.directions={list(data.directions)} names a target language twice; a "
            "multilingual model tells its directions apart by the target's tag."
        )
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


def direction_pair(direction: str) -> tuple[str, str]:
    """ "en-de" -> ("en", "de"); ConfigError for anything else."""
    src, sep, tgt = str(direction).partition("-")
    if not (sep and src and tgt) or "-" in tgt or src == tgt:
        raise ConfigError(
            f"data.directions: {direction!r} is not a direction like en-de (two different "
            "language codes joined by '-')."
        )
    return src, tgt


def _check_positions(model: ModelConfig) -> None:
    """The keys that go with model.positions, and model.attn_window."""
    if model.positions == "rope" and (model.d_model // model.n_heads) % 2:
        raise ConfigError(
            f"model.positions=rope needs an even head dimension, not "
            f"model.d_model / model.n_heads = {model.d_model // model.n_heads}."
        )
    k = model.max_relative_positions
    if model.positions == "relative" and k <= 0:
        raise ConfigError(
            f"model.positions=relative needs model.max_relative_positions > 0, not {k}."
        )
    if model.positions != "relative" and k != 0:
        raise ConfigError(
            f"model.max_relative_positions={k} is used only with model.positions=relative."
        )
    if model.attn_window < 0:
        raise ConfigError(f"model.attn_window={model.attn_window} must be >= 0 (0 = full).")


def validate_model(model: ModelConfig) -> None:
    """Raise ConfigError naming the first model key whose value makes no sense."""
    for key in ("d_model", "n_heads", "n_layers_enc", "n_layers_dec", "d_ff", "max_positions"):
        _check_positive(f"model.{key}", getattr(model, key))
    if model.d_model % model.n_heads:
        raise ConfigError(
            f"model.d_model={model.d_model} is not divisible by model.n_heads={model.n_heads}."
        )
    _check_choice("model.activation", model.activation, ("relu", "gelu"))
    _check_choice("model.norm", model.norm, ("pre", "post"))
    _check_choice("model.positions", model.positions, ("sinusoidal", "learned", "rope", "relative"))
    _check_positions(model)
    for key in ("dropout", "attn_dropout", "act_dropout"):
        if not 0.0 <= getattr(model, key) < 1.0:
            raise ConfigError(f"model.{key}={getattr(model, key)} must be in [0, 1).")


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """The `ModelConfig` of configs/model/<name>.yaml, merged as `model=<name>` composes it.

    Args:
        name: Preset name, a file stem under configs/model/ (e.g. tiny, small, base, big).
        **overrides: ModelConfig fields to change, like `model.<key>=<value>` overrides.

    Returns:
        The schema's defaults, then the preset's values, then the overrides.

    Raises:
        ValueError: If there is no such preset; the message lists the available ones.
    """
    available = sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml"))
    if name not in available:
        raise ConfigError(f"model={name!r} is not a preset; available: {', '.join(available)}.")
    preset = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), preset, overrides)
    return cast(ModelConfig, OmegaConf.to_object(merged))


def validate_train(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first key of a train config that makes no sense."""
    validate_model(cfg.model)
    t = cfg.train
    _check_choice("train.precision", t.precision, ("auto", "bf16", "fp16", "fp32"))
    _check_choice("train.device", t.device, ("auto", "cpu", "cuda"))
    _check_choice("train.schedule", t.schedule, ("inverse_sqrt", "linear"))
    too_short = 0 < t.max_steps <= t.warmup_steps
    unbounded = t.max_steps <= 0 and t.max_minutes <= 0
    if t.schedule == "linear" and (too_short or unbounded):
        raise ConfigError(
            f"train.schedule=linear decays to 0 at train.max_steps, which must exceed "
            f"train.warmup_steps={t.warmup_steps} (got {t.max_steps}), or by train.max_minutes."
        )
    for key in ("max_tokens", "update_freq", "lr"):
        _check_positive(f"train.{key}", getattr(t, key))
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas={t.betas} must hold two numbers.")
    if not 0.0 <= t.label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing={t.label_smoothing} must be in [0, 1).")
    if t.max_tokens < 8:
        raise ConfigError(f"train.max_tokens={t.max_tokens} is too small for any batch.")
    if t.fallback_model:
        if t.max_minutes <= 0 or t.fallback_below_steps <= 0:
            raise ConfigError(
                f"train.fallback_model={t.fallback_model} needs train.max_minutes and "
                "train.fallback_below_steps above 0: it trains the fallback when the model would "
                "make fewer than that many updates in that time."
            )
        validate_model(fallback_model(cfg.model, t.fallback_model))


FALLBACK_SIZES = ("d_model", "n_heads", "n_layers_enc", "n_layers_dec", "d_ff")
"""What train.fallback_model takes from its preset."""


def fallback_model(model: ModelConfig, preset: str) -> ModelConfig:
    """`model` with the sizes of configs/model/<preset>.yaml (train.fallback_model)."""
    sizes = model_preset(preset)
    return replace(model, **{key: getattr(sizes, key) for key in FALLBACK_SIZES})


def validate_decode(decode: DecodeConfig) -> None:
    """Raise ConfigError naming the first decode key whose value makes no sense."""
    keys = ("beam", "nbest", "max_tokens", "batch_size", "buffer_lines", "temperature")
    for key in (*keys, "inter_threads"):
        _check_positive(f"decode.{key}", getattr(decode, key))
    if decode.nbest > decode.beam:
        raise ConfigError(f"decode.nbest={decode.nbest} exceeds decode.beam={decode.beam}.")
    if not 0.0 < decode.topp <= 1.0:
        raise ConfigError(f"decode.topp={decode.topp} must be in (0, 1].")
    if decode.topk < 0:
        raise ConfigError(f"decode.topk={decode.topk} must be 0 or more.")
    if decode.no_repeat_ngram < 0:
        raise ConfigError(f"decode.no_repeat_ngram={decode.no_repeat_ngram} must be 0 or more.")
    _check_choice("decode.alignment_unit", decode.alignment_unit, ("piece", "word"))
    if decode.shortlist < 0:
        raise ConfigError(f"decode.shortlist={decode.shortlist} must be 0 (off) or more.")
    if not 0 <= decode.shortlist_per_source <= 256:  # mt.shortlist.MAX_DEPTH
        raise ConfigError(
            f"decode.shortlist_per_source={decode.shortlist_per_source} must be in 0..256."
        )
    if decode.constraints is not None and decode.sampling:
        raise ConfigError("decode.constraints needs beam search, not decode.sampling=true.")


def validate_serve(cfg: ServeConfig) -> None:
    """Raise ConfigError naming the first key of a serve config that makes no sense."""
    validate_decode(cfg.decode)
    s = cfg.serve
    for key in ("max_batch_sentences", "max_chars", "max_sentences", "max_beam", "timeout_s"):
        _check_positive(f"serve.{key}", getattr(s, key))
    for key in ("max_queue", "max_body_bytes"):
        _check_positive(f"serve.{key}", getattr(s, key))
    if s.batch_window_ms < 0:
        raise ConfigError(f"serve.batch_window_ms={s.batch_window_ms} must be 0 or more.")
    if cfg.decode.beam > s.max_beam:
        raise ConfigError(f"decode.beam={cfg.decode.beam} exceeds serve.max_beam={s.max_beam}.")
    if cfg.decode.sampling:
        raise ConfigError("decode.sampling=true is not supported by mt serve; use beam search.")
    if not 0 <= cfg.port < 65536:
        raise ConfigError(f"port={cfg.port} must be in 0..65535.")


def register_configs() -> None:
    """Register the stage schemas so `defaults: [<stage>_schema]` in YAML finds them."""
    cs = ConfigStore.instance()
    cs.store(name="prepare_schema", node=PrepareConfig)
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="translate_schema", node=TranslateConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="serve_schema", node=ServeConfig)
    cs.store(name="export_schema", node=ExportConfig)
