"""Typed schemas for every config group, registered with Hydra's ConfigStore; validation only.

Every default lives here, in a dataclass field; the YAML files under `configs/` hold presets and
overrides. Hydra merges YAML into these schemas, so a misspelled key or a wrong type is an error
that names the key. `model_preset` reads a configs/model/ preset the same way without Hydra.
"""

from __future__ import annotations

import importlib.resources
import math
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
    """Stop after this much wall-clock training time; 0 for no limit (at most 10,000,000)."""
    lr: float = 7e-4
    """Peak learning rate, reached at the end of warmup; above 0, at most 1."""
    warmup_steps: int = 4000
    """Linear warmup steps before the decay."""
    schedule: str = "inverse_sqrt"
    """inverse_sqrt (lr * sqrt(warmup / step)) | linear (decays to 0 at train.max_steps, or sooner
    where train.max_minutes ends the run first: at the pace so far, the steps that fit in it)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW betas, each in [0, 1)."""
    eps: float = 1e-8
    """AdamW epsilon, 0 to 1."""
    weight_decay: float = 0.0
    """Decoupled weight decay of linear weights, 0 to 1."""
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
    """Seed for initialization, dropout and batch order, 0 to 2**32 - 1."""
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
    """Beam size; 1 is greedy search (its own fast path). Above 1000 needs allow_large."""
    nbest: int = 1
    """Hypotheses written per input line (at most beam); >1 writes `line<TAB>score<TAB>text`."""
    lenpen: float = 1.0
    """GNMT length penalty exponent alpha: score = logprob / ((5 + len) / 6) ** alpha; 0 to 10
    (0 ranks by total log-probability; 10 already favours long outputs overwhelmingly)."""
    max_len_a: float = 1.2
    """Longest output = max_len_a * source tokens + max_len_b (0 to 100); a one-token source must
    be allowed at least one token."""
    max_len_b: int = 10
    """See max_len_a; 0 to 1,000,000 (the model's positions cap the length anyway)."""
    max_tokens: int = 4096
    """Source tokens (padded) per batch. Above 1,000,000 needs allow_large."""
    batch_size: int = 64
    """Sentences per batch at most. Above 100,000 needs allow_large."""
    buffer_lines: int = 2000
    """Input lines read, sorted by length and translated at a time (memory stays flat). Above
    10,000,000 needs allow_large."""
    max_line_bytes: int = 1_000_000
    """Longest input line read into memory, in bytes: an input line longer than this is refused
    with its file and line; raise it for longer lines (above 100,000,000 needs allow_large)."""
    allow_large: bool = False
    """Accept decode.beam or decode.nbest above 1,000, decode.max_tokens above 1,000,000,
    decode.batch_size above 100,000, decode.buffer_lines above 10,000,000 or
    decode.max_line_bytes above 100,000,000: sizes that can exhaust memory, refused unless set."""
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
    """Sampling temperature, 0.001 to 1000."""
    seed: int = 1
    """Seed of sampling, 0 to 2**32 - 1."""
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
    """Decoder layer whose cross-attention (heads averaged) aligns and is drawn: 0 the first, -1
    the last."""
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
    """Paired bootstrap resamples when comparing systems, 1 to 1,000,000."""
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
    """After a request arrives, wait this long for others to decode in the same batch (at most
    60,000)."""
    max_batch_sentences: int = 64
    """Sentences per decoder call at most (a larger request is decoded in several)."""
    max_chars: int = 2000
    """Characters per sentence at most; a longer one is refused with 413."""
    max_sentences: int = 64
    """Sentences per request at most; more are refused with 413."""
    max_beam: int = 8
    """Largest beam a request may ask for (decode.beam is the default)."""
    timeout_s: float = 30.0
    """A request not answered within this many seconds gets 504 (above 0, at most 86,400)."""
    max_queue: int = 256
    """Requests waiting for the decoder at most; over it new ones get 503."""
    max_body_bytes: int = 1_000_000
    """Request body size at most; a larger body is refused with 413."""
    batch_cost: int = 32_768
    """Decoding work of one decoder call at most, in token-steps (beam x output cap per
    sentence); heavy requests are cut into chunks this size, which a light request waits for
    at most."""
    max_request_cost: int = 150_000
    """Decoding work of one request at most, in token-steps; more is refused with 413."""
    read_timeout_s: float = 10.0
    """A request body not complete within this many seconds of its head gets 408 and the
    connection is closed."""
    idle_timeout_s: float = 5.0
    """A connection that sends no complete request head within this many seconds of opening or
    of its last answer is closed."""
    shutdown_s: float = 3.0
    """After SIGTERM, requests in flight have this long to be answered; the rest get 503."""
    api_key: str | None = None
    """Required key (`Authorization: Bearer KEY` or `X-API-Key: KEY`); null reads the
    MT_SERVE_API_KEY environment variable, and no key there leaves the server open. An empty
    key is refused."""
    allow_large: bool = False
    """Accept limits that can exhaust memory, refused unless set: serve.max_batch_sentences or
    serve.max_sentences above 10,000, serve.max_chars or serve.max_queue above 1,000,000,
    serve.max_beam above 1,000, serve.max_body_bytes above 100,000,000."""


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


INT32_MAX = 2**31 - 1
"""The largest value of an integer option without a tighter bound (C ints: CTranslate2, torch)."""
BYTES_MAX = 2**63 - 1
"""The largest byte count (a signed 64-bit file offset)."""
SEED_MAX = 2**32 - 1
"""Seeds go to NumPy, torch and CTranslate2, whose seeds are unsigned 32-bit integers."""
THREADS_MAX = 4096


@dataclass(frozen=True)
class Bound:
    """The values a numeric option accepts: low <= value <= high, finite.

    `open_low` / `open_high` exclude the end. A value above `large` can exhaust memory: it is
    refused unless the group's `allow_large` is set.
    """

    low: float
    high: float = INT32_MAX
    open_low: bool = False
    open_high: bool = False
    large: float | None = None


def _number(x: float) -> str:
    """A bound or value as the user would type it: 10 not 10.0, 1e+308, nan."""
    if isinstance(x, int) and x.bit_length() > 64:  # str() refuses ints of over 4300 digits
        return f"{'-' if x < 0 else ''}<a {int(x.bit_length() * math.log10(2)) + 1}-digit number>"
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x)


def _interval(bound: Bound, too_low: bool = False) -> str:
    """`in [0, 10]`; `at least 1` where the upper end is no real limit and not the problem."""
    if bound.high == math.inf or (too_low and bound.high >= INT32_MAX):
        return f"{'above' if bound.open_low else 'at least'} {_number(bound.low)}"
    left, right = "(" if bound.open_low else "[", ")" if bound.open_high else "]"
    return f"in {left}{_number(bound.low)}, {_number(bound.high)}{right}"


def _within(value: float, bound: Bound) -> bool:
    """Whether `value` is a finite number within `bound` (`large` aside)."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    above_low = value > bound.low if bound.open_low else value >= bound.low
    return above_low and (value < bound.high if bound.open_high else value <= bound.high)


def check_value(key: str, value: float, bound: Bound, large_key: str | None = None) -> None:
    """Raise ConfigError, in one sentence naming `key`, unless `value` is within `bound`.

    Args:
        key: The option as typed on the command line, e.g. `decode.lenpen`.
        value: Its value (an int or a float; NaN and infinities are refused).
        bound: The values it accepts.
        large_key: The key that allows values above `bound.large` (e.g. `decode.allow_large`);
            None when they are allowed.
    """
    shown = _number(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={shown} must be a finite number.")
    if not _within(value, bound):
        raise ConfigError(f"{key}={shown} must be {_interval(bound, value <= bound.low)}.")
    if large_key and bound.large is not None and value > bound.large:
        raise ConfigError(
            f"{key}={shown} is above {bound.large:,}, a size that can exhaust memory; set "
            f"{large_key}=true to use it anyway."
        )


def _check_bounds(
    obj: Any, bounds: dict[str, Bound], group: str = "", allow_large: bool = True
) -> None:
    """check_value for every field of `obj` named in `bounds`; keys are `group.field`.

    Without `allow_large`, values above a bound's `large` are refused, naming `group.allow_large`.
    """
    prefix = f"{group}." if group else ""
    large_key = None if allow_large else f"{group}.allow_large"
    for name, bound in bounds.items():
        check_value(prefix + name, getattr(obj, name), bound, large_key)


def _check_list(key: str, values: list[float], bound: Bound) -> None:
    """Every number of a list option within `bound`; the message shows the whole list."""
    if not all(_within(value, bound) for value in values):
        shown = "[" + ", ".join(_number(value) for value in values) + "]"
        raise ConfigError(f"{key}={shown} must hold finite numbers {_interval(bound)}.")


CLEAN_BOUNDS = {
    "max_words": Bound(1),
    "max_ratio": Bound(0.0, math.inf, open_low=True),
    "ratio_min_words": Bound(0),
}
SPM_BOUNDS = {
    "vocab_size": Bound(8),
    "character_coverage": Bound(0.0, 1.0, open_low=True),
    "input_sentence_size": Bound(1),
}
PREPARE_BOUNDS = {"workers": Bound(0, THREADS_MAX), "seed": Bound(0, SEED_MAX)}
MODEL_BOUNDS = {
    "d_model": Bound(1, 65_536),
    "n_heads": Bound(1, 65_536),
    "n_layers_enc": Bound(1, 1024),
    "n_layers_dec": Bound(1, 1024),
    "d_ff": Bound(1, 1_048_576),
    "dropout": Bound(0.0, 1.0, open_high=True),
    "attn_dropout": Bound(0.0, 1.0, open_high=True),
    "act_dropout": Bound(0.0, 1.0, open_high=True),
    "max_positions": Bound(1, 1_048_576),
    "max_relative_positions": Bound(0, 1_048_576),
    "attn_window": Bound(0),
}
TRAIN_BOUNDS = {
    "max_tokens": Bound(8),  # fewer cannot hold a pair of sentences with bos and eos
    "update_freq": Bound(1),
    "max_steps": Bound(0),
    "max_epochs": Bound(0),
    "max_minutes": Bound(0.0, 1e7),  # minutes * 60 stays an exact float; ~19 years
    "lr": Bound(0.0, 1.0, open_low=True),  # AdamW steps by ~lr per weight: above 1 diverges
    "warmup_steps": Bound(0),
    "eps": Bound(0.0, 1.0),
    "weight_decay": Bound(0.0, 1.0),  # lr * weight_decay >= 1 would flip the weights' sign
    "clip_norm": Bound(0.0, math.inf),
    "label_smoothing": Bound(0.0, 1.0, open_high=True),
    "seed": Bound(0, SEED_MAX),
    "valid_every": Bound(0),
    "patience": Bound(0),
    "keep_last": Bound(0),
    "average_last": Bound(0),
    "log_every": Bound(1),  # a modulus
    "threads": Bound(0, THREADS_MAX),
    "max_bad_steps": Bound(1),
    "fallback_below_steps": Bound(0),
}
DECODE_BOUNDS = {
    "beam": Bound(1, large=1000),
    "nbest": Bound(1, large=1000),
    "lenpen": Bound(0.0, 10.0),  # ((5 + len) / 6) ** lenpen overflows near 140 (1,000 tokens)
    "max_len_a": Bound(0.0, 100.0),  # a * src_len past 2**63 wraps the length cap to 0
    "max_len_b": Bound(0, 1_000_000),
    "max_tokens": Bound(1, large=1_000_000),
    "batch_size": Bound(1, large=100_000),
    "buffer_lines": Bound(1, large=10_000_000),
    "max_line_bytes": Bound(1, BYTES_MAX, large=100_000_000),
    "inter_threads": Bound(1, THREADS_MAX),
    "topk": Bound(0),
    "topp": Bound(0.0, 1.0, open_low=True),
    "temperature": Bound(0.001, 1000.0),  # log-probs / temperature stay finite
    "seed": Bound(0, SEED_MAX),
    "no_repeat_ngram": Bound(0),
    "alignment_layer": Bound(-1),  # the model's depth bounds it from above, checked at load
    "attention_lines": Bound(0),
    "shortlist": Bound(0),
    "shortlist_per_source": Bound(0, 256),  # mt.shortlist.MAX_DEPTH
}
SERVE_BOUNDS = {
    "batch_window_ms": Bound(0.0, 60_000.0),
    "max_batch_sentences": Bound(1, large=10_000),
    "max_chars": Bound(1, large=1_000_000),
    "max_sentences": Bound(1, large=10_000),
    "max_beam": Bound(1, large=1000),
    "timeout_s": Bound(0.0, 86_400.0, open_low=True),
    "max_queue": Bound(1, large=1_000_000),
    "max_body_bytes": Bound(1, BYTES_MAX, large=100_000_000),
    "batch_cost": Bound(1, large=10_000_000),
    "max_request_cost": Bound(1, large=100_000_000),
    "read_timeout_s": Bound(0.0, 3600.0, open_low=True),
    "idle_timeout_s": Bound(0.0, 3600.0, open_low=True),
    "shutdown_s": Bound(0.0, 600.0),
}
PORT_BOUND = Bound(0, 65_535)
THREADS_BOUND = Bound(0, THREADS_MAX)
BOOTSTRAP_BOUND = Bound(1, 1_000_000)
"""eval's bootstrap_samples: p-values resolve to 1e-6 by then; each resample rescores a corpus."""


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
    _check_bounds(clean, CLEAN_BOUNDS, "clean")
    _check_bounds(spm, SPM_BOUNDS, "spm")
    _check_bounds(cfg, PREPARE_BOUNDS)
    if spm.vocab_size < 8 + len(spm.user_defined_symbols):
        raise ConfigError(f"spm.vocab_size={spm.vocab_size} is too small.")
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
    """The keys that go with model.positions."""
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


def validate_model(model: ModelConfig) -> None:
    """Raise ConfigError naming the first model key whose value makes no sense."""
    _check_bounds(model, MODEL_BOUNDS, "model")
    if model.d_model % model.n_heads:
        raise ConfigError(
            f"model.d_model={model.d_model} is not divisible by model.n_heads={model.n_heads}."
        )
    _check_choice("model.activation", model.activation, ("relu", "gelu"))
    _check_choice("model.norm", model.norm, ("pre", "post"))
    _check_choice("model.positions", model.positions, ("sinusoidal", "learned", "rope", "relative"))
    _check_positions(model)


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
    _check_bounds(t, TRAIN_BOUNDS, "train")
    _check_list("train.betas", t.betas, Bound(0.0, 1.0, open_high=True))
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
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas={t.betas} must hold two numbers.")
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
    if decode.alignment_layer < -1:
        raise ConfigError(
            f"decode.alignment_layer={_number(decode.alignment_layer)} must be -1 (the last "
            "layer) or a layer index from 0."
        )
    _check_bounds(decode, DECODE_BOUNDS, "decode", decode.allow_large)
    if decode.nbest > decode.beam:
        raise ConfigError(f"decode.nbest={decode.nbest} exceeds decode.beam={decode.beam}.")
    if int(decode.max_len_a + decode.max_len_b) < 1:  # the cap of a one-token source
        raise ConfigError(
            f"decode.max_len_a={_number(decode.max_len_a)} and decode.max_len_b="
            f"{_number(decode.max_len_b)} allow no output for a one-token source (its output is "
            "cut to max_len_a + max_len_b tokens); raise one of them."
        )
    if decode.ensemble_weights is not None:
        _check_list("decode.ensemble_weights", decode.ensemble_weights, Bound(0.0, math.inf))
        if sum(decode.ensemble_weights) <= 0:
            raise ConfigError(
                f"decode.ensemble_weights={decode.ensemble_weights} must have a weight above 0."
            )
    _check_choice("decode.alignment_unit", decode.alignment_unit, ("piece", "word"))
    if decode.constraints is not None and decode.sampling:
        raise ConfigError("decode.constraints needs beam search, not decode.sampling=true.")


def validate_serve(cfg: ServeConfig) -> None:
    """Raise ConfigError naming the first key of a serve config that makes no sense."""
    validate_decode(cfg.decode)
    s = cfg.serve
    _check_bounds(s, SERVE_BOUNDS, "serve", s.allow_large)
    check_value("port", cfg.port, PORT_BOUND)
    check_value("threads", cfg.threads, THREADS_BOUND)
    if cfg.decode.beam > s.max_beam:
        raise ConfigError(f"decode.beam={cfg.decode.beam} exceeds serve.max_beam={s.max_beam}.")
    if cfg.decode.sampling:
        raise ConfigError("decode.sampling=true is not supported by mt serve; use beam search.")


def validate_translate(cfg: TranslateConfig) -> None:
    """Raise ConfigError naming the first key of a translate config that makes no sense."""
    validate_decode(cfg.decode)
    check_value("threads", cfg.threads, THREADS_BOUND)


def validate_eval(cfg: EvalConfig) -> None:
    """Raise ConfigError naming the first key of an eval config that makes no sense."""
    validate_decode(cfg.decode)
    check_value("bootstrap_samples", cfg.bootstrap_samples, BOOTSTRAP_BOUND)
    check_value("threads", cfg.threads, THREADS_BOUND)


def register_configs() -> None:
    """Register the stage schemas so `defaults: [<stage>_schema]` in YAML finds them."""
    cs = ConfigStore.instance()
    cs.store(name="prepare_schema", node=PrepareConfig)
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="translate_schema", node=TranslateConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="serve_schema", node=ServeConfig)
    cs.store(name="export_schema", node=ExportConfig)
