"""prepare -> train -> translate -> eval end to end through the `mt` command, on CPU."""

import json

from tests.conftest import write_corpus
from tests.test_cli import mt


def test_four_stages_end_to_end(tmp_path):
    write_corpus(tmp_path / "corpus")
    steps = [
        ("prepare", "data=local", "data.path=corpus", "out_dir=data", "spm.vocab_size=320"),
        ("train", "data_dir=data", "run_dir=run", "model=tiny", "train.device=cpu",
         "train.max_steps=30", "train.valid_every=15", "train.max_tokens=512"),
        ("translate", "run_dir=run", "input=corpus/test.en", "output=test.hyp", "decode.beam=3"),
        ("eval", "hyp=test.hyp", "ref=corpus/test.de", "report=scores.json"),
    ]  # fmt: skip
    for args in steps:
        result = mt(*args, cwd=tmp_path)
        assert result.returncode == 0, f"mt {args[0]}: {result.stderr}"
    hyps = (tmp_path / "test.hyp").read_text().splitlines()
    assert len(hyps) == len((tmp_path / "corpus" / "test.en").read_text().splitlines())
    report = json.loads((tmp_path / "scores.json").read_text())
    assert {"BLEU", "chrF", "TER"} <= set(report["systems"]["test.hyp"])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["step"] == 30 and [h["step"] for h in results["history"]] == [15, 30]
