"""Schemas of decoding: the decode group and the stages that decode with a trained run,
`mt translate` (`TranslateConfig`) and `mt eval` (`EvalConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DecodeConfig:
    """Search settings of `mt translate` and `mt eval`."""

    beam: int | None = None
    """Beam size; 1 is greedy search (its own fast path). Above 1000 needs allow_large. Unset:
    the beam size `mt train` tuned for the run on validation (RUN_DIR/decoding.json), else 5."""
    nbest: int = 1
    """Hypotheses written per input line (at most beam); >1 writes `line<TAB>score<TAB>text`."""
    lenpen: float | None = None
    """GNMT length penalty exponent alpha: score = logprob / ((5 + len) / 6) ** alpha; 0 to 10
    (0 ranks by total log-probability; 10 already favours long outputs overwhelmingly). Unset:
    the value `mt train` tuned for the run on validation (RUN_DIR/decoding.json), else 1.0."""
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
    shortlist_per_source most likely others, and eos (mt/decode/shortlist.py); 0: whole vocabulary.
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
