import gzip
import json
from pathlib import Path

import pytest

import mt.corpus as corpus_module
from mt.config import DataConfig
from mt.corpus import Pairs, load_corpus, open_corpus, read_lines
from mt.errors import MTError


def _data(path: Path, **kw) -> DataConfig:
    return DataConfig(**{"path": str(path), "valid": "valid", "test": None, **kw})


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_aligned_text_plain_and_gzipped(tmp_path):
    _write(tmp_path / "train.en", ["a b", "c"])
    with gzip.open(tmp_path / "train.de.gz", "wt", encoding="utf-8") as f:
        f.write("x y\nz\n")
    _write(tmp_path / "valid.en", ["v"])
    _write(tmp_path / "valid.de", ["w"])
    corpus = load_corpus(_data(tmp_path))
    assert corpus.splits["train"].src == ["a b", "c"]
    assert corpus.splits["train"].tgt == ["x y", "z"]
    assert corpus.splits["valid"].tgt == ["w"]
    assert len(corpus.inputs) == 4


def test_direction_is_a_setting(tmp_path):
    for lang, lines in (("en", ["a"]), ("de", ["x"]), ("fr", ["q"])):
        _write(tmp_path / f"train.{lang}", lines)
        _write(tmp_path / f"valid.{lang}", lines)
    corpus = load_corpus(_data(tmp_path, src="de", tgt="fr"))
    assert (corpus.splits["train"].src, corpus.splits["train"].tgt) == (["x"], ["q"])


def test_tsv_with_header_and_with_declared_columns(tmp_path):
    _write(tmp_path / "train.tsv", ["de\ten", "x y\ta b", "z\tc"])
    _write(tmp_path / "valid.tsv", ["de\ten", "w\tv"])
    corpus = load_corpus(_data(tmp_path))
    assert corpus.splits["train"].src == ["a b", "c"]
    assert corpus.splits["train"].tgt == ["x y", "z"]
    _write(tmp_path / "train.tsv", ["a b\tx y"])
    _write(tmp_path / "valid.tsv", ["v\tw"])
    corpus = load_corpus(_data(tmp_path, tsv_columns=["en", "de"]))
    assert corpus.splits["train"].tgt == ["x y"]


def test_jsonl_flat_and_translation_layouts(tmp_path):
    _write(tmp_path / "train.jsonl", [json.dumps({"en": "a", "de": "x"})])
    _write(tmp_path / "valid.jsonl", [json.dumps({"translation": {"en": "v", "de": "w"}})])
    corpus = load_corpus(_data(tmp_path))
    assert corpus.splits["train"].tgt == ["x"]
    assert corpus.splits["valid"].src == ["v"]


@pytest.mark.parametrize("layout", ["columns", "translation"])
def test_hub_path_loads_through_datasets(tmp_path, layout):
    # a local dataset folder goes through the same datasets.load_dataset call as a hub id
    for split, (en, de) in {"train": ("a b", "x y"), "validation": ("v", "w")}.items():
        row = {"en": en, "de": de} if layout == "columns" else {"translation": {"en": en, "de": de}}
        _write(tmp_path / f"{split}.jsonl", [json.dumps(row)] * 3)
    data = DataConfig(hub_id=str(tmp_path), train="train", valid="validation", test=None)
    corpus = load_corpus(data)
    assert corpus.splits["train"].src == ["a b"] * 3
    assert corpus.splits["valid"].tgt == ["w"] * 3
    assert set(corpus.fingerprints) == {"train", "valid"}


def test_hub_missing_column_names_the_columns(tmp_path):
    _write(tmp_path / "train.jsonl", [json.dumps({"en": "a", "fr": "b"})])
    with pytest.raises(MTError, match="no column 'de'.*en, fr"):
        load_corpus(DataConfig(hub_id=str(tmp_path), valid=None, test=None))


def test_missing_file_is_named(tmp_path):
    _write(tmp_path / "train.en", ["a"])
    _write(tmp_path / "train.de", ["x"])
    with pytest.raises(MTError, match=r"missing file .*valid\.en"):
        load_corpus(_data(tmp_path))


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path):
    _write(tmp_path / "train.en", ["a", "b", "c"])
    _write(tmp_path / "train.de", ["x", "y"])
    with pytest.raises(MTError, match=r"train\.en has 3 lines but .*train\.de has 2"):
        load_corpus(_data(tmp_path, valid=None))


def test_invalid_utf8_names_file_and_line(tmp_path):
    (tmp_path / "train.en").write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(MTError, match=r"train\.en:3: byte 0xff at column 5 is not valid UTF-8"):
        read_lines(tmp_path / "train.en")


def test_lines_split_only_at_newline(tmp_path):
    # U+2028 and \x1c are line breaks for str.splitlines(), but not for aligned text files
    (tmp_path / "f").write_text("a\u2028b\nc\x1cd\r\n", encoding="utf-8")
    assert read_lines(tmp_path / "f") == ["a\u2028b", "c\x1cd\r"]


def test_bad_tsv_and_jsonl_lines_are_located(tmp_path):
    _write(tmp_path / "train.tsv", ["en\tde", "a\tx", "only one field"])
    with pytest.raises(MTError, match=r"train\.tsv:3: expected 2 tab-separated fields, found 1"):
        load_corpus(_data(tmp_path, valid=None))
    (tmp_path / "train.tsv").unlink()
    _write(tmp_path / "train.jsonl", [json.dumps({"en": "a", "de": "x"}), "{not json"])
    with pytest.raises(MTError, match=r"train\.jsonl:2: not valid JSON"):
        load_corpus(_data(tmp_path, valid=None))


def _chunks(data: DataConfig, split: str, size: int) -> list[Pairs]:
    return list(open_corpus(data).chunks(split, size))


def test_text_streams_in_chunks_across_small_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "BLOCK", 5)  # many reads per file, lines cut across them
    src = [f"sentence {i}" for i in range(23)]
    tgt = [f"Satz {i} ü" for i in range(23)]
    _write(tmp_path / "train.en", src)
    with gzip.open(tmp_path / "train.de.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(tgt) + "\n")
    chunks = _chunks(_data(tmp_path, valid=None), "train", 10)
    assert [len(c) for c in chunks] == [10, 10, 3]
    assert sum((c.src for c in chunks), []) == src
    assert sum((c.tgt for c in chunks), []) == tgt
    assert read_lines(tmp_path / "train.de.gz") == tgt


def test_mismatch_found_in_a_later_chunk_names_both_full_counts(tmp_path):
    _write(tmp_path / "train.en", [str(i) for i in range(25)])
    _write(tmp_path / "train.de", [str(i) for i in range(21)])
    with pytest.raises(MTError, match=r"train\.en has 25 lines but .*train\.de has 21"):
        _chunks(_data(tmp_path, valid=None), "train", 10)


def test_invalid_utf8_in_a_later_block_names_file_line_and_column(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "BLOCK", 8)
    (tmp_path / "f.gz").write_bytes(gzip.compress(b"one\ntwo\nthree\nfour \xc3x\n"))
    with pytest.raises(MTError, match=r"f\.gz:4: byte 0xc3 at column 6 is not valid UTF-8"):
        read_lines(tmp_path / "f.gz")


def test_streamed_lines_keep_the_whole_file_rules(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "BLOCK", 2)
    cases = {b"": [], b"\n": [], b"\n\n": ["", ""], b"\xef\xbb\xbfa\nb": ["a", "b"]}
    for raw, lines in cases.items():
        (tmp_path / "f").write_bytes(raw)
        assert read_lines(tmp_path / "f") == lines, raw


def test_tsv_and_jsonl_line_numbers_count_across_chunks(tmp_path):
    _write(tmp_path / "train.tsv", ["en\tde"] + ["a\tx"] * 6 + ["only one field"])
    with pytest.raises(MTError, match=r"train\.tsv:8: expected 2 tab-separated fields"):
        _chunks(_data(tmp_path, valid=None), "train", 3)
    (tmp_path / "train.tsv").unlink()
    good = json.dumps({"en": "a", "de": "x"})
    _write(tmp_path / "train.jsonl", [good, "", good, good, good, "{not json"])
    with pytest.raises(MTError, match=r"train\.jsonl:6: not valid JSON"):
        _chunks(_data(tmp_path, valid=None), "train", 2)


def test_hub_streams_in_batches(tmp_path):
    rows = [json.dumps({"translation": {"en": f"a{i}", "de": f"x{i}"}}) for i in range(7)]
    _write(tmp_path / "train.jsonl", rows)
    data = DataConfig(hub_id=str(tmp_path), train="train", valid=None, test=None)
    chunks = _chunks(data, "train", 3)
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert chunks[2].src == ["a6"] and chunks[2].tgt == ["x6"]
