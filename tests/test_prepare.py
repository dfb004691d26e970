import dataclasses
import gzip
import json
import os

import pytest

import mt.corpus as corpus_module
import mt.prepare as prepare_module
from mt.clean import clean_split
from mt.config import CleanConfig, DataConfig
from mt.corpus import Pairs, load_corpus
from mt.errors import MTError
from mt.prepare import run_prepare
from mt.shards import Shard
from mt.tokenizer import Tokenizer
from tests.conftest import prepare_config


def test_prepare_writes_manifest_and_round_trips(corpus_dir, tmp_path):
    out = tmp_path / "out"
    manifest = run_prepare(prepare_config(corpus_dir, out))
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == dataclasses.asdict(manifest)
    assert manifest.direction == "en-de"
    assert manifest.pairs("valid") == 20
    assert manifest.pairs("test") == 20
    assert manifest.cleaning["train"]["read"] == 300
    train = manifest.pairs("train")
    assert train == manifest.cleaning["train"]["kept"]
    assert train + manifest.cleaning["train"]["dropped"]["duplicate"] == 300
    assert manifest.spm.vocab_size <= 320
    assert len(manifest.source["files"]) == 6
    assert all(len(f["sha256"]) == 64 for f in manifest.source["files"])
    tok = Tokenizer(out / "spm.model")
    raw = (corpus_dir / "test.de").read_text(encoding="utf-8").splitlines()
    shard = Shard.load(out, "test", "tgt")
    assert tok.decode([shard[i].tolist() for i in range(len(shard))]) == raw


def test_second_run_is_up_to_date_and_force_rebuilds(corpus_dir, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = prepare_config(corpus_dir, out)
    run_prepare(cfg)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    capsys.readouterr()
    run_prepare(cfg)
    assert "up to date" in capsys.readouterr().out
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    run_prepare(prepare_config(corpus_dir, out, "force=true"))
    assert "up to date" not in capsys.readouterr().out


def test_touched_but_unchanged_input_is_still_up_to_date(corpus_dir, tmp_path, capsys):
    out = tmp_path / "out"
    run_prepare(prepare_config(corpus_dir, out))
    os.utime(corpus_dir / "train.en", ns=(1, 1))
    capsys.readouterr()
    run_prepare(prepare_config(corpus_dir, out))
    assert "up to date" in capsys.readouterr().out


def test_changed_input_or_setting_rebuilds(corpus_dir, tmp_path, capsys):
    out = tmp_path / "out"
    run_prepare(prepare_config(corpus_dir, out))
    with open(corpus_dir / "train.en", "a") as f_en, open(corpus_dir / "train.de", "a") as f_de:
        f_en.write("a new line\n")
        f_de.write("eine neue Zeile\n")
    capsys.readouterr()
    assert run_prepare(prepare_config(corpus_dir, out)).cleaning["train"]["read"] == 301
    manifest = run_prepare(prepare_config(corpus_dir, out, "spm.model_type=bpe"))
    assert "up to date" not in capsys.readouterr().out
    assert manifest.config["spm"]["model_type"] == "bpe"


def test_separate_vocabularies_per_language(corpus_dir, tmp_path):
    out = tmp_path / "out"
    manifest = run_prepare(prepare_config(corpus_dir, out, "spm.joint=false"))
    assert manifest.spm.models == {"src": "spm.en.model", "tgt": "spm.de.model"}
    assert (out / "spm.en.model").is_file() and (out / "spm.de.model").is_file()


def test_foreign_out_dir_is_refused_and_left_alone(corpus_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(MTError, match="not empty and holds no mt manifest.json"):
        run_prepare(prepare_config(corpus_dir, out))
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "precious"


def test_rebuild_keeps_files_it_does_not_own(corpus_dir, tmp_path):
    out = tmp_path / "out"
    run_prepare(prepare_config(corpus_dir, out))
    (out / "notes.txt").write_text("mine")
    run_prepare(prepare_config(corpus_dir, out, "force=true"))
    assert (out / "notes.txt").read_text() == "mine"


def test_corpus_empty_after_cleaning_is_an_error(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for split in ("train", "valid", "test"):
        (corpus / f"{split}.en").write_text("\n  \n\n")
        (corpus / f"{split}.de").write_text("x\ny\nz\n")
    with pytest.raises(MTError, match=r"training split is empty after cleaning.*empty 3"):
        run_prepare(prepare_config(corpus, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _outputs(folder):
    """Every output file's bytes but the manifest and the model (which names its build path)."""
    skip = {"manifest.json", "spm.model"}
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name not in skip}


def _with_repeats(corpus_dir):
    """Append the first 40 training pairs again, so duplicates sit in later chunks."""
    for lang in ("en", "de"):
        path = corpus_dir / f"train.{lang}"
        lines = path.read_text(encoding="utf-8").splitlines()
        path.write_text("\n".join(lines + lines[:40]) + "\n", encoding="utf-8")


def test_streaming_in_small_chunks_gives_the_same_output(corpus_dir, tmp_path, monkeypatch):
    _with_repeats(corpus_dir)
    whole = run_prepare(prepare_config(corpus_dir, tmp_path / "whole"))
    monkeypatch.setattr(prepare_module, "CLEAN_CHUNK", 7)
    monkeypatch.setattr(prepare_module, "ENCODE_CHUNK", 11)
    monkeypatch.setattr(corpus_module, "BLOCK", 64)
    chunked = run_prepare(prepare_config(corpus_dir, tmp_path / "chunked"))
    assert chunked.cleaning == whole.cleaning and chunked.splits == whole.splits
    assert _outputs(tmp_path / "chunked") == _outputs(tmp_path / "whole")
    # and both report what cleaning the split held whole in memory reports
    train = load_corpus(DataConfig(path=str(corpus_dir))).splits["train"]
    _, report = clean_split(train, CleanConfig(), filter_pairs=True)
    assert chunked.cleaning["train"] == dataclasses.asdict(report)
    assert report.read == 340 and report.dropped["duplicate"] >= 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunked", "corpus", "whole"]
    assert "text" not in chunked.files


def test_gzipped_corpus_streams_to_the_same_output(corpus_dir, tmp_path):
    plain = run_prepare(prepare_config(corpus_dir, tmp_path / "plain"))
    for path in list(corpus_dir.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    zipped = run_prepare(prepare_config(corpus_dir, tmp_path / "zipped"))
    assert zipped.cleaning == plain.cleaning and zipped.splits == plain.splits
    assert _outputs(tmp_path / "zipped") == _outputs(tmp_path / "plain")


def test_max_train_pairs_across_chunks(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "CLEAN_CHUNK", 7)
    manifest = run_prepare(prepare_config(corpus_dir, tmp_path / "out", "data.max_train_pairs=50"))
    assert manifest.cleaning["train"]["read"] == 50
    train = load_corpus(DataConfig(path=str(corpus_dir))).splits["train"]
    _, report = clean_split(Pairs(train.src[:50], train.tgt[:50]), CleanConfig(), filter_pairs=True)
    assert manifest.cleaning["train"] == dataclasses.asdict(report)
    assert manifest.pairs("train") == report.kept
