"""Engine-agnostic input preparation: source ids as the model was trained on them, target
prefixes and constraint phrases as ids, output length limits, and one line per output."""

from __future__ import annotations

import logging

import torch

from mt.clean import normalize
from mt.config import DecodeConfig
from mt.decode.run import LoadedRun
from mt.decode.search import Limits
from mt.errors import MTError
from mt.tokenizer import BOS_ID, EOS_ID

log = logging.getLogger("mt.translate")


def prepare_ids(run: LoadedRun, lines: list[str], where: str, first_line: int) -> list[list[int]]:
    """Source ids of each line as the model was trained on them: normalized, encoded, and cut
    to the model's length (room for eos) with a warning naming the line."""
    ids = run.src_tok.encode(normalize(lines, run.normalize_form))
    if run.src_tag is not None:  # empty lines stay empty (they are not translated)
        ids = [[run.src_tag, *seq] if seq else seq for seq in ids]
    limit = run.max_len - 1  # room for eos
    for i, seq in enumerate(ids):
        if len(seq) > limit:
            log.warning(
                "%s:%d: %d tokens, truncated to the model's limit of %d",
                where, first_line + i, len(seq), limit,
            )  # fmt: skip
            ids[i] = seq[:limit]
    return ids


def limits_for(run: LoadedRun, decode: DecodeConfig) -> Limits:
    """Where outputs start and end for this run and these decode settings."""
    return Limits(
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        max_len_a=decode.max_len_a,
        max_len_b=decode.max_len_b,
        max_len=run.max_len - 1,  # bos takes the first of the model's positions
    )


def output_caps(run: LoadedRun, decode: DecodeConfig, src_lengths: list[int]) -> list[int]:
    """The cap on output tokens (before eos) of sources of `src_lengths` tokens, eos included."""
    return limits_for(run, decode).caps(torch.tensor(src_lengths, dtype=torch.long)).tolist()


def prefix_ids(
    run: LoadedRun,
    decode: DecodeConfig,
    ids: list[list[int]],
    prefixes: list[str] | None,
    where: str,
    first_line: int,
) -> list[list[int]] | None:
    """Target ids of each line's prefix, or None without prefixes; a run whose outputs start
    with a forced language code (imported NLLB) gets it in front of every prefix.

    Raises:
        MTError: If a prefix is longer than its line's output may be, naming the line.
    """
    if prefixes is None or not any(p.strip() for p in prefixes):
        return None if run.tgt_tag is None else [[run.tgt_tag] for _ in ids]
    forced = run.tgt_tok.encode(normalize(prefixes, run.normalize_form))
    if run.tgt_tag is not None:
        forced = [[run.tgt_tag, *seq] for seq in forced]
    caps = output_caps(run, decode, [len(seq) + 1 for seq in ids])
    for i, (seq, cap) in enumerate(zip(forced, caps, strict=True)):
        if len(seq) > cap:
            raise MTError(
                f"{where}:{first_line + i}: the target prefix has {len(seq)} tokens, more than "
                f"the {cap} this line's output may have (decode.max_len_a, decode.max_len_b)."
            )
    return forced


def constraint_ids(
    run: LoadedRun,
    decode: DecodeConfig,
    ids: list[list[int]],
    constraints: list[list[str]] | None,
    where: str,
    first_line: int,
) -> list[list[list[int]]] | None:
    """Target ids of each line's constraint phrases, or None without any.

    A line whose phrases hold more tokens than its output may have is warned about by line: its
    output then holds as many of them as fit.
    """
    if constraints is None or not any(constraints):
        return None
    phrases = [run.tgt_tok.encode(normalize(line, run.normalize_form)) for line in constraints]
    caps = output_caps(run, decode, [len(seq) + 1 for seq in ids])
    for i, (line, cap) in enumerate(zip(phrases, caps, strict=True)):
        if sum(map(len, line)) > cap:
            log.warning(
                "%s:%d: the constraints have %d tokens, more than the %d this line's output may "
                "have; not all of them can appear", where, first_line + i, sum(map(len, line)), cap,
            )  # fmt: skip
    return phrases


# Every character that Python's str.splitlines() (and so many readers) treats as a line end.
_LINE_BREAKS = str.maketrans(dict.fromkeys("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029", " "))


def one_line(text: str) -> str:
    """`text` with line-ending characters as spaces, so one output line stays one line.

    Byte-fallback pieces can decode to any character, including line ends: an untrained or
    unlucky model must still write exactly one line per input line.
    """
    return text.translate(_LINE_BREAKS)
