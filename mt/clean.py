"""Cleaning of raw pairs: whitespace, Unicode normalization, and filters with a report.

Every split is normalized (strip, collapse whitespace runs, NFC by default). Only the training
split is filtered (empty, too long, bad length ratio, duplicate); validation and test pairs are
kept and the pairs a filter would have caught are only counted. A split is cleaned chunk by
chunk (`SplitCleaner`), so it never has to be in memory whole.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field

import numpy as np

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


def pair_hashes(src: list[str], tgt: list[str]) -> np.ndarray:
    """A deterministic 64-bit hash of each pair [N] (uint64).

    blake2b over source bytes, 0xff, target bytes: 0xff never occurs in UTF-8, so no two
    different pairs hash the same bytes. Two of 5,000,000 distinct pairs share a 64-bit hash
    with probability about 7e-7.
    """
    digests = b"".join(
        hashlib.blake2b(s.encode() + b"\xff" + t.encode(), digest_size=8).digest()
        for s, t in zip(src, tgt, strict=True)
    )
    return np.frombuffer(digests, dtype="<u8")


class SplitCleaner:
    """Cleans one split chunk by chunk; the counts and the dedup memory carry across chunks.

    Deduplication keeps the first occurrence of a pair. It remembers the pairs kept so far as
    one sorted array of 64-bit hashes (8 bytes a pair), not as strings.
    """

    def __init__(self, cfg: CleanConfig, *, filter_pairs: bool) -> None:
        """`filter_pairs`: True for the training split; False only counts what would drop."""
        self.cfg, self.filter_pairs = cfg, filter_pairs
        self.read = self.kept = 0
        self.counts = dict.fromkeys(REASONS, 0)
        self.seen = np.zeros(0, dtype=np.uint64)  # sorted hashes of every pair kept so far

    def clean(self, pairs: Pairs) -> Pairs:
        """The next chunk of the split, normalized and (if filtering) without dropped pairs."""
        src, tgt = (
            normalize(pairs.src, self.cfg.normalize),
            normalize(pairs.tgt, self.cfg.normalize),
        )
        # word counts: one C-level count per sentence, no per-token Python work
        reasons = [
            _reason(s.count(" ") + 1 if s else 0, t.count(" ") + 1 if t else 0, self.cfg)
            for s, t in zip(src, tgt, strict=True)
        ]
        for reason in reasons:
            if reason is not None:
                self.counts[reason] += 1
        self.read += len(src)
        if self.filter_pairs:
            src = [s for s, reason in zip(src, reasons, strict=True) if reason is None]
            tgt = [t for t, reason in zip(tgt, reasons, strict=True) if reason is None]
            if self.cfg.dedup:
                src, tgt = self._dedup(src, tgt)
        self.kept += len(src)
        return Pairs(src, tgt)

    def _dedup(self, src: list[str], tgt: list[str]) -> tuple[list[str], list[str]]:
        """The pairs seen neither earlier in this chunk nor in an earlier chunk."""
        unique, first = np.unique(pair_hashes(src, tgt), return_index=True)  # sorted hashes
        pos = np.searchsorted(self.seen, unique)
        seen = (
            self.seen[np.minimum(pos, len(self.seen) - 1)] == unique if len(self.seen) else pos < 0
        )
        # unique is sorted, so inserting it at its sorted positions keeps `seen` sorted
        self.seen = np.insert(self.seen, pos[~seen], unique[~seen])
        keep = np.sort(first[~seen])
        self.counts["duplicate"] += len(src) - len(keep)
        return [src[i] for i in keep], [tgt[i] for i in keep]

    def report(self) -> CleanReport:
        """Counts so far: dropped per reason when filtering, else the flagged ones."""
        if self.filter_pairs:
            return CleanReport(self.read, self.kept, dict(self.counts))
        flagged = {k: v for k, v in self.counts.items() if v}
        return CleanReport(self.read, self.kept, flagged=flagged)


def clean_split(pairs: Pairs, cfg: CleanConfig, *, filter_pairs: bool) -> tuple[Pairs, CleanReport]:
    """Normalize one split held in memory and, if `filter_pairs`, drop the pairs that fail a filter.

    Args:
        pairs: raw aligned sentences.
        cfg: the cleaning settings.
        filter_pairs: True for the training split; False only counts what would be dropped.

    Returns:
        The cleaned pairs and a report of kept and dropped (or flagged) counts per reason.
    """
    cleaner = SplitCleaner(cfg, filter_pairs=filter_pairs)
    return cleaner.clean(pairs), cleaner.report()
