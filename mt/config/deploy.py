"""Schemas of the stages that bring a run in or ship it out: `mt import` (`ImportConfig`),
`mt export` (`ExportConfig`) and `mt serve` (`ServeConfig` with its serve group,
`ServeOptions`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mt.config.decode import DecodeConfig


@dataclass
class ImportConfig:
    """`mt import`: a Hugging Face Marian (OPUS-MT) or M2M100 (NLLB) model -> an mt run folder."""

    source: str = "???"
    """A hub id (Helsinki-NLP/opus-mt-en-de) or a local folder written by save_pretrained with
    its tokenizer files."""
    run_dir: str = "???"
    """Run folder to write (new, or an earlier import with force=true)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of a hub id; null: the default branch."""
    src_lang: str | None = None
    """M2M100 / NLLB: the source language code every input starts with (eng_Latn); null: the
    tokenizer's own src_lang."""
    force: bool = False
    """Replace an earlier import in run_dir."""


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
