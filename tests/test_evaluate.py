"""mt eval: sacreBLEU scores, signatures, comparisons, and clear errors."""

import json

import sacrebleu

from tests.test_cli import assert_clean_error, mt

REFS = ["A man is walking a dog.", "Two kids play in the park.", "A red car.", "It is raining."]
HYPS = ["A man walks a dog.", "Two children play in a park.", "A red car.", "It rains."]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_hypothesis_equal_to_references_scores_100(tmp_path):
    ref = _write(tmp_path / "ref.txt", REFS)
    result = mt("eval", f"hyp={ref}", f"ref={ref}", f"report={tmp_path / 'r.json'}")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    scores = report["systems"][str(ref)]
    assert scores["BLEU"]["score"] == 100.0 and scores["chrF"]["score"] == 100.0
    assert scores["TER"]["score"] == 0.0
    assert "tok:13a" in scores["BLEU"]["signature"] and "BLEU" in result.stdout


def test_bleu_equals_sacrebleu_and_accepts_two_references(tmp_path):
    hyp, ref = _write(tmp_path / "h.txt", HYPS), _write(tmp_path / "r.txt", REFS)
    ref2 = _write(tmp_path / "r2.txt", HYPS[:2] + REFS[2:])
    result = mt("eval", f"hyp={hyp}", f"ref={ref}", f"report={tmp_path / 'j.json'}")
    ours = json.loads((tmp_path / "j.json").read_text())["systems"][str(hyp)]["BLEU"]["score"]
    assert ours == round(sacrebleu.corpus_bleu(HYPS, [REFS]).score, 2)
    result = mt("eval", f"hyp={hyp}", f"ref={ref}", f"ref={ref2}", f"report={tmp_path / 'k.json'}")
    assert result.returncode == 0, result.stderr
    two = json.loads((tmp_path / "k.json").read_text())["systems"][str(hyp)]["BLEU"]
    assert two["score"] == round(sacrebleu.corpus_bleu(HYPS, [REFS, HYPS[:2] + REFS[2:]]).score, 2)
    assert "nrefs:2" in two["signature"]


def test_paired_bootstrap_compares_two_systems(tmp_path):
    ref = _write(tmp_path / "r.txt", REFS * 10)
    good = _write(tmp_path / "good.txt", REFS[:3] * 10 + ["x"] * 10)
    bad = _write(tmp_path / "bad.txt", ["nothing like it"] * 40)
    result = mt(
        "eval",
        f"hyp=[{bad},{good}]",
        f"ref={ref}",
        "bootstrap_samples=200",
        f"report={tmp_path / 'c.json'}",
    )
    assert result.returncode == 0, result.stderr
    comparison = json.loads((tmp_path / "c.json").read_text())["comparison"]
    assert comparison[str(good)]["BLEU"]["significant"] is True  # better than the baseline
    assert comparison[str(bad)]["BLEU"]["p_value"] is None  # the baseline
    assert "paired bootstrap" in result.stdout


def test_mismatched_line_counts_fail_clearly(tmp_path):
    hyp, ref = _write(tmp_path / "h.txt", HYPS[:3]), _write(tmp_path / "r.txt", REFS)
    assert_clean_error(mt("eval", f"hyp={hyp}", f"ref={ref}"), "h.txt has 3 lines", "has 4")


def test_missing_files_fail_clearly(tmp_path):
    ref = _write(tmp_path / "r.txt", REFS)
    assert_clean_error(mt("eval", f"hyp={tmp_path / 'no.txt'}", f"ref={ref}"), "does not exist")
    assert_clean_error(mt("eval", f"hyp={ref}"), "needs ref=FILE")


def test_translate_then_score_in_one_command(overfit_run, tmp_path):
    corpus, run, _ = overfit_run
    out = tmp_path / "hyp.txt"
    result = mt(
        "eval",
        f"run_dir={run}",
        f"src={corpus / 'train.en'}",
        f"ref={corpus / 'train.de'}",
        f"output={out}",
        "decode.beam=2",
        f"report={tmp_path / 'r.json'}",
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text() == (corpus / "train.de").read_text()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["systems"][str(out)]["BLEU"]["score"] == 100.0


def test_lowercased_bleu_is_reported_beside_cased_bleu(tmp_path):
    ref = _write(tmp_path / "ref.txt", REFS)
    hyp = _write(tmp_path / "hyp.txt", [line.upper() for line in REFS])
    result = mt("eval", f"hyp={hyp}", f"ref={ref}", f"report={tmp_path / 'r.json'}")
    assert result.returncode == 0, result.stderr
    scores = json.loads((tmp_path / "r.json").read_text())["systems"][str(hyp)]
    assert scores["BLEU-lc"]["score"] == 100.0  # the same words once case is ignored
    assert scores["BLEU"]["score"] < 20.0
    assert "case:lc" in scores["BLEU-lc"]["signature"]
    assert "case:mixed" in scores["BLEU"]["signature"] and "BLEU-lc" in result.stdout
    lc = sacrebleu.corpus_bleu([line.upper() for line in REFS], [REFS], lowercase=True).score
    assert scores["BLEU-lc"]["score"] == round(lc, 2)
