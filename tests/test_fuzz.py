"""Property-based tests: hostile text never crashes prepare or translate.

Random Unicode with control characters, right-to-left marks, emoji, NUL, CR/LF mixes, very long
lines, empty files, and byte strings that are not UTF-8 (lone surrogates encoded as bytes).
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mt.config import DecodeConfig
from mt.decode.run import load_run
from mt.decode.torch_engine import TorchTranslator
from mt.errors import MTError
from mt.prepare import run_prepare
from mt.translate import read_buffers
from tests.conftest import make_pairs, prepare_config

SPECIAL = ["\u200f", "\u202e", "\x00", "\r", "\u2028", "\ufeff", "😀", "\x1b[31m", "\t", "\u0301"]
hostile_text = st.lists(st.one_of(st.text(max_size=40), st.sampled_from(SPECIAL)), max_size=8).map(
    "".join
)
# a line with no "\n" in it; "\r" and friends stay in
hostile_line = hostile_text.map(lambda s: s.replace("\n", " "))

FUZZ = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(lines=st.lists(hostile_line, max_size=20), long_line=st.booleans())
def test_prepare_survives_hostile_text(tmp_path_factory, lines, long_line):
    folder = tmp_path_factory.mktemp("fuzz")
    en, de = make_pairs(60, seed=0)  # enough ordinary text for a vocabulary
    extra = lines + (["x" * 100_000] if long_line else [])
    for split in ("train", "valid", "test"):
        (folder / f"{split}.en").write_text("\n".join(en + extra) + "\n", encoding="utf-8")
        (folder / f"{split}.de").write_text("\n".join(de + extra[::-1]) + "\n", encoding="utf-8")
    try:
        manifest = run_prepare(prepare_config(folder, folder / "out"))
    except MTError as exc:  # more distinct characters than the tiny test vocabulary holds
        assert "spm.vocab_size=320 is smaller than the" in str(exc)
        return
    assert manifest.pairs("valid") == 60 + len(extra)  # never filtered
    assert manifest.pairs("train") <= 60 + len(extra)


@FUZZ
@given(prefix=st.lists(hostile_line, max_size=5), bad=st.binary(min_size=1, max_size=8))
def test_prepare_names_the_line_of_bytes_that_are_not_utf8(tmp_path_factory, prefix, bad):
    try:
        bad.decode("utf-8")
        return  # valid UTF-8 by chance: nothing to report
    except UnicodeDecodeError:
        pass
    folder = tmp_path_factory.mktemp("bad")
    body = "".join(line + "\n" for line in prefix).encode() + b"x" + bad.replace(b"\n", b"") + b"\n"
    (folder / "train.en").write_bytes(body)
    (folder / "train.de").write_text("y\n" * (len(prefix) + 1), encoding="utf-8")
    for split in ("valid", "test"):
        (folder / f"{split}.en").write_text("a\n")
        (folder / f"{split}.de").write_text("b\n")
    with pytest.raises(MTError, match=rf"train\.en:{len(prefix) + 1}: .*not valid UTF-8"):
        run_prepare(prepare_config(folder, folder / "out"))


def test_empty_files_are_a_clear_error(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.en").write_bytes(b"")
        (tmp_path / f"{split}.de").write_bytes(b"")
    with pytest.raises(MTError, match="training split is empty"):
        run_prepare(prepare_config(tmp_path, tmp_path / "out"))


@pytest.fixture(scope="module")
def translator(overfit_run):
    _, run, _ = overfit_run
    cpu = torch.device("cpu")
    return TorchTranslator(load_run(run, None, cpu), DecodeConfig(beam=2), cpu, "fp32")


@FUZZ
@given(lines=st.lists(hostile_line, max_size=12))
def test_translate_gives_one_output_per_input_line(translator, lines):
    out = translator.translate(lines)
    assert len(out) == len(lines)
    for line, hyps in zip(lines, out, strict=True):
        if not line.split():
            assert hyps == []  # blank in, blank out


def test_translate_long_lines_and_empty_files(overfit_run, tmp_path):
    from mt.translate import translate_files

    _, run, _ = overfit_run
    cpu = torch.device("cpu")
    translator = TorchTranslator(load_run(run, None, cpu), DecodeConfig(beam=2), cpu, "fp32")
    (tmp_path / "empty.txt").write_bytes(b"")
    assert translate_files(translator, [str(tmp_path / "empty.txt")], str(tmp_path / "e.hyp")) == 0
    assert (tmp_path / "e.hyp").read_bytes() == b""
    long_lines = ["x" * 100_000, "the man " * 12_500, "\u202e" * 100_000]
    (tmp_path / "long.txt").write_text("\n".join(long_lines) + "\n", encoding="utf-8")
    assert translate_files(translator, [str(tmp_path / "long.txt")], str(tmp_path / "l.hyp")) == 3
    assert len((tmp_path / "l.hyp").read_text(encoding="utf-8").splitlines()) == 3


@FUZZ
@given(text=hostile_text)
def test_read_buffers_counts_lines_like_the_file_does(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("rb") / "in.txt"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        lines = [line for _, _, chunk in read_buffers([str(path)], 3) for line in chunk]
    except MTError as exc:
        assert "in.txt:" in str(exc)  # lone surrogates: named with their line
        return
    raw = path.read_bytes()
    assert len(lines) == raw.count(b"\n") + (0 if raw.endswith(b"\n") or not raw else 1)
