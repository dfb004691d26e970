"""Thin sacreBLEU wrapper: corpus BLEU, chrF and TER, each with its signature."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest


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


def paired_bootstrap(
    systems: list[tuple[str, list[str]]], refs: list[list[str]], metrics: list[str], samples: int
) -> dict[str, Any]:
    """Compare systems to the first (the baseline) with sacreBLEU's paired bootstrap test.

    Returns:
        {"systems": {name: {metric: {score, mean, ci, p_value, significant}}}, "table": text}
        where significant means p < 0.05 against the baseline.
    """
    logging.getLogger("sacrebleu").setLevel(logging.WARNING)  # it logs every resampling step
    chosen = {name: cls() for key, (name, cls) in _PAIRED.items() if key in metrics}
    test = PairedTest(systems, chosen, refs, test_type="bs", n_samples=samples)
    signatures, scores = test()
    names = scores.pop("System")
    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    lines = [f"paired bootstrap ({samples} resamples), baseline: {names[0]}"]
    for metric, results in scores.items():
        lines.append(f"  {metric}  ({signatures[metric]})")
        for name, r in zip(names, results, strict=True):
            significant = r.p_value is not None and r.p_value < 0.05
            out[name][metric] = {
                "score": round(float(r.score), 2),
                "mean": round(float(r.mean), 2),
                "ci95": round(float(r.ci), 2),
                "p_value": None if r.p_value is None else float(r.p_value),
                "significant": significant,
            }
            verdict = (
                "baseline"
                if r.p_value is None
                else (f"p={r.p_value:.4f} " + ("significant" if significant else "not significant"))
            )
            lines.append(f"    {name:<30} {r.score:6.2f} ({r.mean:.2f} +- {r.ci:.2f})  {verdict}")
    return {"systems": out, "table": "\n".join(lines)}


_PAIRED = {
    "bleu": ("BLEU", BLEU),
    "bleu_lc": ("BLEU-lc", lambda: BLEU(lowercase=True)),
    "chrf": ("chrF", CHRF),
    "ter": ("TER", TER),
}
