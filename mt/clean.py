"""Cleaning of raw pairs: whitespace, Unicode normalization, and filters with a report.

Every split is normalized (strip, collapse whitespace runs, NFC by default). Only the training
split is filtered (empty, too long, bad length ratio, duplicate); validation and test pairs are
kept and the pairs a filter would have caught are only counted.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

from mt.config import CleanConfig
from mt.corpus import Pairs

REASONS = ("empty", "too_long", "ratio", "duplicate")


@dataclass
class CleanReport:
    """What cleaning did to one split."""

    read: int
    kept: int
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    """Pairs removed, per reason (training split only)."""
    flagged: dict[str, int] = field(default_factory=dict)
    """Pairs a filter would catch but that were kept (validation and test splits)."""


def _squash(line: str) -> str:
    """`line` stripped, with every whitespace run as one space; the same object if clean already.

    Keeping the object matters at scale: millions of already-clean lines then cost no copies.
    A printable string holds no whitespace but " ", so it is clean unless spaces lead, trail
    or repeat.
    """
    if line.isprintable() and "  " not in line and line[:1] != " " and line[-1:] != " ":
        return line
    return " ".join(line.split())


def normalize(lines: list[str], form: str) -> list[str]:
    """Strip, collapse whitespace runs to one space and apply a Unicode normalization form."""
    if form == "none":
        return [_squash(line) for line in lines]
    norm, is_norm = unicodedata.normalize, unicodedata.is_normalized
    return [_squash(line if is_norm(form, line) else norm(form, line)) for line in lines]


def _reason(n_src: int, n_tgt: int, cfg: CleanConfig) -> str | None:
    """Why a pair of word counts fails the length filters, or None."""
    if n_src == 0 or n_tgt == 0:
        return "empty"
    longer, shorter = max(n_src, n_tgt), min(n_src, n_tgt)
    if longer > cfg.max_words:
        return "too_long"
    if longer >= cfg.ratio_min_words and longer > cfg.max_ratio * shorter:
        return "ratio"
    return None


def clean_split(pairs: Pairs, cfg: CleanConfig, *, filter_pairs: bool) -> tuple[Pairs, CleanReport]:
    """Normalize one split and, if `filter_pairs`, drop the pairs that fail a filter.

    Args:
        pairs: raw aligned sentences.
        cfg: the cleaning settings.
        filter_pairs: True for the training split; False only counts what would be dropped.

    Returns:
        The cleaned pairs and a report of kept and dropped (or flagged) counts per reason.
    """
    src, tgt = normalize(pairs.src, cfg.normalize), normalize(pairs.tgt, cfg.normalize)
    # word counts: one C-level split per sentence, no per-token Python work
    reasons = [
        _reason(s.count(" ") + 1 if s else 0, t.count(" ") + 1 if t else 0, cfg)
        for s, t in zip(src, tgt, strict=True)
    ]
    counts = dict.fromkeys(REASONS, 0)
    for reason in reasons:
        if reason is not None:
            counts[reason] += 1
    if not filter_pairs:
        report = CleanReport(len(src), len(src), flagged={k: v for k, v in counts.items() if v})
        return Pairs(src, tgt), report
    kept_src, kept_tgt, seen = [], [], set()
    for s, t, reason in zip(src, tgt, reasons, strict=True):
        if reason is not None:
            continue
        if cfg.dedup:
            if (s, t) in seen:
                counts["duplicate"] += 1
                continue
            seen.add((s, t))
        kept_src.append(s)
        kept_tgt.append(t)
    return Pairs(kept_src, kept_tgt), CleanReport(len(src), len(kept_src), counts)
