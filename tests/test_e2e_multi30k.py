"""End-to-end on the real Multi30k files; CI points MT_MULTI30K at their folder.

Without MT_MULTI30K the tests skip, except under CI=true, where a missing corpus is a failure.
"""

import gzip
import json
import os
import unicodedata
from pathlib import Path

import pytest

from mt.shards import Shard
from mt.tokenizer import Tokenizer
from tests.test_cli import mt

CORPUS = os.environ.get("MT_MULTI30K")

if CORPUS is None and os.environ.get("CI") == "true":
    raise RuntimeError("CI must set MT_MULTI30K to the Multi30k folder")
pytestmark = pytest.mark.skipif(CORPUS is None, reason="set MT_MULTI30K to the Multi30k folder")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("m30k") / "data"
    result = mt("prepare", "data=multi30k_local", f"data.path={CORPUS}", f"out_dir={out}")
    assert result.returncode == 0, result.stderr
    return out


def test_counts_and_decoded_text(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    splits = manifest["splits"]
    assert 28_900 <= splits["train"]["pairs"] <= 29_000
    assert splits["valid"]["pairs"] == 1_014
    assert splits["test"]["pairs"] == 1_000
    assert manifest["direction"] == "en-de"
    with gzip.open(Path(CORPUS) / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as f:
        raw = [" ".join(unicodedata.normalize("NFC", line).split()) for line in f]
    tok = Tokenizer(prepared / manifest["spm"]["models"]["tgt"])
    shard = Shard.load(prepared, "test", "tgt")
    decoded = tok.decode([shard[i].tolist() for i in range(len(shard))])
    assert decoded == raw


def test_rerun_is_up_to_date(prepared):
    result = mt("prepare", "data=multi30k_local", f"data.path={CORPUS}", f"out_dir={prepared}")
    assert result.returncode == 0 and "up to date" in result.stdout


def test_french_target_on_the_same_files(tmp_path):
    out = tmp_path / "fr"
    result = mt(
        "prepare", "data=multi30k_local", f"data.path={CORPUS}", "data.tgt=fr", f"out_dir={out}"
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["direction"] == "en-fr"
    assert manifest["splits"]["test"]["pairs"] == 1_000
