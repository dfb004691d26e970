"""run_translate: text files or stdin in, translations out, through a `Translator`.

Input is read a buffer of lines at a time, translated, and written in input order before the
next buffer is read, so output starts early and memory stays flat on any input size. An empty
input line gives an empty output line. The output appears only when complete (`mt.files`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from mt.config import DecodeConfig, TranslateConfig, validate_translate
from mt.decode.engine import Translator, make_translator, setup_inference
from mt.decode.run import as_list, load_run, run_files
from mt.errors import FileFault, MTError
from mt.files import Output, refuse_inputs

log = logging.getLogger("mt.translate")


MAX_LINE_BYTES = DecodeConfig.max_line_bytes  # the one default: the config field


def read_buffers(
    paths: list[str], size: int, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[str, int, list[str]]]:
    """(file name, first line number, lines) buffers of at most `size` lines, strictly UTF-8.

    A line is read with a bound: one longer than `max_line_bytes` is refused with its file and
    line number, before a file without line ends can fill the memory.
    """
    for path in paths:
        name = "<stdin>" if path == "-" else path
        with _open_input(path) as f:
            buffer, first = [], 1
            for number, raw in enumerate(_bounded_lines(f, name, max_line_bytes), start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise MTError(
                        f"{name}:{number}: byte 0x{raw[exc.start]:02x} is not valid UTF-8."
                    ) from None
                buffer.append(line.rstrip("\n").rstrip("\r"))
                if len(buffer) == size:
                    yield name, first, buffer
                    buffer, first = [], number + 1
            if buffer:
                yield name, first, buffer


def _bounded_lines(f: IO[bytes], name: str, limit: int) -> Iterator[bytes]:
    number = 0
    while raw := f.readline(limit + 1):
        number += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            raise MTError(
                f"{name}:{number}: the line is longer than {limit:,} bytes; raise "
                "decode.max_line_bytes to read it."
            )
        yield raw


@contextmanager
def _open_input(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise MTError(f"cannot read input {path}: {exc.strerror}.") from None
    with f:
        yield f


def _format(results: list[list[tuple[str, float]]], nbest: int, first_line: int) -> str:
    if nbest == 1:
        return "".join(f"{hyps[0][0] if hyps else ''}\n" for hyps in results)
    lines = []
    for offset, hyps in enumerate(results):
        lines += [f"{first_line + offset}\t{score:.4f}\t{text}\n" for text, score in hyps]
    return "".join(lines)


INPUT_FORMATS = ("text", "tsv")


def translate_files(
    translator: Translator, inputs: list[str], output: str, input_format: str = "text"
) -> int:
    """Stream `inputs` through the translator into `output`; returns the lines translated.

    input_format=tsv reads `source<TAB>target prefix` lines; decode.prefix names a file of
    prefixes, one per input line, and decode.constraints a file of tab-separated phrases.
    """
    if input_format not in INPUT_FORMATS:
        raise MTError(f"input_format={input_format!r} is not one of {', '.join(INPUT_FORMATS)}.")
    d = translator.decode
    prefix_lines = _SideLines("decode.prefix", d.prefix)
    constraint_lines = _SideLines("decode.constraints", d.constraints)
    out = Output(output)
    try:
        for name, first, lines in read_buffers(inputs, d.buffer_lines, d.max_line_bytes):
            prefixes = prefix_lines.take(len(lines))
            if input_format == "tsv":
                pairs = [line.split("\t", 1) for line in lines]
                lines, prefixes = [p[0] for p in pairs], [p[1] if len(p) > 1 else "" for p in pairs]
            phrases = constraint_lines.take(len(lines))
            if phrases is not None:
                phrases = [[p for p in line.split("\t") if p.strip()] for line in phrases]
            extra = {} if phrases is None else {"constraints": phrases}
            results = translator.translate(lines, name, first, prefixes, **extra)
            out.write(_format(results, d.nbest, first))
            out.commit(len(lines))
        prefix_lines.check_end()
        constraint_lines.check_end()
        out.close()
    except FileFault as exc:
        raise FileFault(f"{str(exc).rstrip('.')}; {out.abandon()}.", exc.path) from None
    except BaseException:
        kept = out.abandon()  # failed or interrupted: the output is left as it was
        if out.lines and kept:
            log.warning("translation stopped after %d input lines: %s.", out.lines, kept)
        raise
    return out.lines


class _SideLines:
    """The lines of a file that goes line by line with the input (decode.prefix, ...)."""

    def __init__(self, key: str, path: str | None) -> None:
        self.key, self.path = key, path
        self._lines = None
        if path is not None:
            self._lines = (line for _, _, buffer in read_buffers([path], 2000) for line in buffer)

    def take(self, n: int) -> list[str] | None:
        """The next n lines, or None without a file."""
        if self._lines is None:
            return None
        lines = [next(self._lines, None) for _ in range(n)]
        if None in lines:
            raise MTError(f"{self.key} {self.path} has fewer lines than the input.")
        return lines  # type: ignore[return-value]

    def check_end(self) -> None:
        """Refuse a file with more lines than the input had."""
        if self._lines is not None and next(self._lines, None) is not None:
            raise MTError(f"{self.key} {self.path} has more lines than the input.")


def side_inputs(decode: DecodeConfig) -> list[str]:
    """The files besides the input that decoding reads line by line."""
    return [p for p in (decode.prefix, decode.constraints) if p]


def run_translate(cfg: TranslateConfig) -> int:
    """Translate cfg.input into cfg.output; returns the number of input lines."""
    validate_translate(cfg)
    inputs = as_list(cfg.input)
    refuse_inputs(cfg.output, [*inputs, *side_inputs(cfg.decode)])
    device, precision = setup_inference(cfg.device, cfg.precision, cfg.threads)
    run = load_run(Path(cfg.run_dir), cfg.checkpoint, device)
    refuse_inputs(cfg.output, run_files(run))
    translator = make_translator(run, cfg.decode, device, precision, cfg.engine)
    total = translate_files(translator, inputs, cfg.output, cfg.input_format)
    log.info("translated %d lines with %s", total, run.checkpoint)
    return total
