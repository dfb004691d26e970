"""Paired bootstrap: no difference is never a win, and the resample count shown is the one used."""

import json
import re

import pytest

from mt.config import ConfigError
from mt.metrics import paired_bootstrap
from tests.test_cli import assert_clean_error, mt

METRICS = ["bleu", "bleu_lc", "chrf", "ter"]
REFS = ["A man is walking a dog.", "Two kids play in the park.", "A red car.", "It is raining."]
REFS = REFS * 10
CLOSE = ["A man walks a dog.", "Two children play in a park.", "A red car.", "It rains."] * 10
FAR = ["nothing like it"] * 40


def _compare(*systems: list[str], samples: int = 200) -> dict:
    named = [(f"s{i}", hyps) for i, hyps in enumerate(systems)]
    return paired_bootstrap(named, [REFS], METRICS, samples)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("hyps", [CLOSE, FAR, REFS])
def test_identical_systems_have_p_1_and_are_not_significant(hyps):
    result = _compare(hyps, list(hyps))
    for metric, r in result["systems"]["s1"].items():
        assert r["p_value"] == 1.0, metric
        assert r["significant"] is False, metric
    assert "p=1.0000 not significant" in result["table"]
    assert not re.search(r"p=[0-9.]+ significant", result["table"])


def test_a_clearly_better_system_is_significant_on_every_metric():
    result = _compare(FAR, REFS)
    assert result["systems"]["s0"]["BLEU"]["p_value"] is None  # the baseline
    for metric, r in result["systems"]["s1"].items():  # TER too, where lower is better
        assert r["significant"] is True and r["p_value"] < 0.05, metric


def test_a_worse_system_is_never_called_significant():
    result = _compare(REFS, FAR)
    for metric, r in result["systems"]["s1"].items():
        assert r["p_value"] == 1.0 and r["significant"] is False, metric


def test_printed_resample_count_is_the_one_used():
    result = _compare(FAR, REFS, samples=37)
    assert "paired bootstrap (37 resamples)" in result["table"]
    assert "bs:37" in result["table"]  # sacreBLEU's signature of each metric says it too
    # p = (resamples where the system is not better + 1) / (37 + 1): never better here
    assert result["systems"]["s1"]["BLEU"]["p_value"] == pytest.approx(1 / 38)


@pytest.mark.parametrize("samples", [0, -5, 10**7])
def test_resample_counts_that_cannot_be_used_are_refused(samples):
    with pytest.raises(ConfigError, match=f"bootstrap_samples={samples} must be in"):
        _compare(FAR, REFS, samples=samples)


def test_mt_eval_of_a_byte_copy_is_not_significant(tmp_path):
    ref = _write(tmp_path / "ref.txt", REFS)
    a = _write(tmp_path / "a.txt", CLOSE)
    b = tmp_path / "b.txt"
    b.write_bytes(a.read_bytes())
    report = tmp_path / "r.json"
    result = mt("eval", f"hyp=[{a},{b}]", f"ref={ref}", "bootstrap_samples=100", f"report={report}")
    assert result.returncode == 0, result.stderr
    comparison = json.loads(report.read_text())["comparison"][str(b)]
    assert {m: r["p_value"] for m, r in comparison.items()} == dict.fromkeys(comparison, 1.0)
    assert not any(r["significant"] for r in comparison.values())
    assert "p=1.0000 not significant" in result.stdout
    assert "(100 resamples)" in result.stdout
    assert not re.search(r"p=[0-9.]+ significant", result.stdout)


def test_mt_eval_refuses_zero_resamples_in_one_sentence(tmp_path):
    ref = _write(tmp_path / "ref.txt", REFS)
    a = _write(tmp_path / "a.txt", CLOSE)
    result = mt("eval", f"hyp=[{a},{ref}]", f"ref={ref}", "bootstrap_samples=0")
    assert_clean_error(result, "bootstrap_samples=0")
