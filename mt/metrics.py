"""Thin sacreBLEU wrapper: corpus BLEU, chrF and TER, each with its signature, and the paired
bootstrap comparison of systems."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import estimate_ci

from mt.config import BOOTSTRAP_BOUND, check_value


@dataclass
class Score:
    """One corpus-level metric value and the sacreBLEU signature that reproduces it."""

    name: str
    score: float
    signature: str
    detail: str = ""


def bleu(hyps: list[str], refs: list[list[str]]) -> Score:
    """Detokenized, case-sensitive corpus BLEU (13a tokenizer); refs is a list of streams."""
    metric = BLEU()
    result = metric.corpus_score(hyps, refs)
    return Score("BLEU", result.score, str(metric.get_signature()), str(result))


def bleu_lc(hyps: list[str], refs: list[list[str]]) -> Score:
    """BLEU as `bleu`, on lowercased text (sacrebleu -lc): the literature's lowercased figures."""
    metric = BLEU(lowercase=True)
    result = metric.corpus_score(hyps, refs)
    return Score("BLEU-lc", result.score, str(metric.get_signature()), str(result))


def chrf(hyps: list[str], refs: list[list[str]]) -> Score:
    metric = CHRF()
    result = metric.corpus_score(hyps, refs)
    return Score("chrF", result.score, str(metric.get_signature()), str(result))


def ter(hyps: list[str], refs: list[list[str]]) -> Score:
    metric = TER()
    result = metric.corpus_score(hyps, refs)
    return Score("TER", result.score, str(metric.get_signature()), str(result))


SEED = 12345
"""Seed of the resampling, sacreBLEU's default (SACREBLEU_SEED): every system and every run
sees the same resamples, and the signatures say seed:12345."""
ALPHA = 0.05
"""A system is significantly better than the baseline when p < ALPHA."""
_CHUNK = 256
"""Resamples drawn at a time: memory stays at _CHUNK x segments whatever the count."""


def paired_bootstrap(
    systems: list[tuple[str, list[str]]], refs: list[list[str]], metrics: list[str], samples: int
) -> dict[str, Any]:
    """Compare systems to the first (the baseline) by paired bootstrap resampling (Koehn 2004).

    Every system is scored on the same `samples` resamples of the test set's segments. A
    system's p-value is the share of resamples in which it is not better than the baseline,
    (count + 1) / (samples + 1): a copy of the baseline, or a system never ahead, has p = 1.
    sacreBLEU's own test (`PairedTest`, `--paired-bs`) is not used: it tests |difference|
    against its resampled spread, so a byte copy of the baseline gets p = 1 / (samples + 1)
    and a worse system counts as significant; and it replaces a count below 1 by 1000 unsaid.
    Its metrics, sufficient statistics, signatures and confidence intervals are used as they are.

    Args:
        systems: (name, hypotheses) pairs; the first is the baseline.
        refs: Reference streams, each with one line per hypothesis.
        metrics: Keys of the metrics to compare: bleu, bleu_lc, chrf, ter (others are skipped).
        samples: Resamples, 1 to 1,000,000: exactly this many are drawn and printed.

    Returns:
        {"systems": {name: {metric: {score, mean, ci95, p_value, significant}}}, "table": text,
        "samples": samples}, where significant means better than the baseline with p < 0.05;
        the baseline's p_value is None.

    Raises:
        ConfigError: If `samples` is out of range.
    """
    check_value("bootstrap_samples", samples, BOOTSTRAP_BOUND)
    names = [name for name, _ in systems]
    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    lines = [f"paired bootstrap ({samples} resamples), baseline: {names[0]}"]
    for key in (key for key in metrics if key in _PAIRED):
        label, make, sign = _PAIRED[key]
        metric = make()
        rows = _compare(metric, sign, [hyps for _, hyps in systems], refs, samples)
        signature = metric.get_signature()  # complete once the metric has seen references
        signature.update("seed", str(SEED))
        signature.update("bs", samples)
        lines.append(f"  {label}  ({signature})")
        for name, row in zip(names, rows, strict=True):
            out[name][label] = row
            lines.append(_table_row(name, row))
    return {"systems": out, "table": "\n".join(lines), "samples": samples}


def _compare(
    metric: Any, sign: int, systems: list[list[str]], refs: list[list[str]], samples: int
) -> list[dict[str, Any]]:
    """Each system's score, bootstrap mean and 95% interval, and p-value against the first.

    `sign` is +1 where higher scores are better, -1 where lower are (TER).
    """
    rows, baseline = [], None
    for hyps in systems:
        stats = np.asarray(metric._extract_corpus_statistics(hyps, refs), dtype=np.float64)
        score = metric._compute_score_from_stats(stats.sum(axis=0)).score
        resampled = np.array(
            [metric._compute_score_from_stats(s).score for s in _resampled_sums(stats, samples)]
        )
        mean, ci = estimate_ci(resampled)
        p_value = None
        if baseline is None:
            baseline = resampled
        else:  # resamples where the system is not better, +1 (Davison and Hinkley 1997)
            not_better = int(np.count_nonzero(sign * (resampled - baseline) <= 0))
            p_value = (not_better + 1) / (samples + 1)
        rows.append(
            {
                "score": round(float(score), 2),
                "mean": round(float(mean), 2),
                "ci95": round(float(ci), 2),
                "p_value": p_value,
                "significant": p_value is not None and p_value < ALPHA,
            }
        )
    return rows


def _resampled_sums(stats: np.ndarray, samples: int) -> np.ndarray:
    """Summed statistics [samples, k] of resamples, with replacement, of segments' stats [n, k].

    The generator restarts from SEED on each call, so systems of one test set see the same
    resamples (the pairing). A resample's sum is its segment counts [n] times `stats`.
    """
    rng = np.random.default_rng(SEED)
    n = stats.shape[0]
    sums = np.empty((samples, stats.shape[1]))
    for start in range(0, samples, _CHUNK):
        rows = min(_CHUNK, samples - start)
        picks = rng.integers(0, max(n, 1), size=(rows, n))  # [rows, n] segment ids
        flat = (picks + n * np.arange(rows)[:, None]).ravel()  # one id range per resample
        counts = np.bincount(flat, minlength=rows * n).reshape(rows, n)
        sums[start : start + rows] = counts @ stats
    return sums


def _table_row(name: str, row: dict[str, Any]) -> str:
    p_value = row["p_value"]
    if p_value is None:
        verdict = "baseline"
    else:
        verdict = f"p={p_value:.4f} " + ("significant" if row["significant"] else "not significant")
    return f"    {name:<30} {row['score']:6.2f} ({row['mean']:.2f} +- {row['ci95']:.2f})  {verdict}"


_PAIRED: dict[str, tuple[str, Callable[[], Any], int]] = {
    "bleu": ("BLEU", BLEU, 1),
    "bleu_lc": ("BLEU-lc", lambda: BLEU(lowercase=True), 1),
    "chrf": ("chrF", CHRF, 1),
    "ter": ("TER", TER, -1),
}
"""metric key -> (name, sacreBLEU metric, +1 if higher is better else -1)."""
