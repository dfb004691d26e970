"""mt translate on a tiny model that memorized 32 pairs."""

import random
import subprocess

import pytest

from mt.config import DecodeConfig
from mt.decode.inputs import one_line, prepare_ids
from mt.decode.run import load_run
from mt.decode.torch_engine import TorchTranslator
from mt.errors import MTError
from mt.translate import read_buffers
from tests.test_cli import MT, assert_clean_error, mt


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def translator(overfit_run):
    import torch

    _, run, _ = overfit_run
    return TorchTranslator(
        load_run(run, None, torch.device("cpu")), DecodeConfig(), torch.device("cpu"), "fp32"
    )


def test_beam_search_recovers_the_training_targets(overfit_run, translator):
    corpus, _, _ = overfit_run
    src, tgt = _lines(corpus / "train.en"), _lines(corpus / "train.de")
    out = translator.translate(src)
    assert [hyps[0][0] for hyps in out] == tgt


def test_output_order_equals_input_order_for_shuffled_lengths(overfit_run, translator):
    corpus, _, _ = overfit_run
    pairs = list(zip(_lines(corpus / "train.en"), _lines(corpus / "train.de"), strict=True))
    random.Random(0).shuffle(pairs)
    translator.decode.batch_size = 3  # many batches, each sorted by length
    try:
        out = translator.translate([s for s, _ in pairs])
    finally:
        translator.decode.batch_size = 64
    assert [hyps[0][0] for hyps in out] == [t for _, t in pairs]


@pytest.mark.parametrize("beam", [1, 4])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batches_decoded_at_once_give_the_outputs_of_one_at_a_time(overfit_run, beam, precision):
    import torch

    corpus, run_dir, _ = overfit_run
    pairs = list(zip(_lines(corpus / "train.en"), _lines(corpus / "train.de"), strict=True))
    random.Random(1).shuffle(pairs)
    run = load_run(run_dir, None, torch.device("cpu"))
    outputs, threads = [], torch.get_num_threads()
    for inter in (1, 3):
        decode = DecodeConfig(
            beam=beam, nbest=min(beam, 2), batch_size=2, inter_threads=inter, alignment=True
        )
        # fp32 steps take DecoderLayer.step; bf16 ones DecoderLayer.forward, where the
        # alignment hook sits
        translator = TorchTranslator(run, decode, torch.device("cpu"), precision)
        outputs.append(translator.translate([s for s, _ in pairs]))
        assert torch.get_num_threads() == threads  # restored after the batches
    assert outputs[1] == outputs[0]
    assert [hyps[0][0].split("\t")[0] for hyps in outputs[1]] == [t for _, t in pairs]


def test_inter_threads_below_one_is_a_clear_error(overfit_run):
    _, run, _ = overfit_run
    result = mt("translate", f"run_dir={run}", "decode.inter_threads=0", stdin="a\n")
    assert_clean_error(result, "decode.inter_threads")


def test_nbest_is_sorted_by_score(overfit_run, translator):
    corpus, _, _ = overfit_run
    translator.decode.nbest = 4
    try:
        out = translator.translate(_lines(corpus / "train.en")[:5])
    finally:
        translator.decode.nbest = 1
    for hyps in out:
        assert len(hyps) == 4
        scores = [score for _, score in hyps]
        assert scores == sorted(scores, reverse=True)


def test_file_to_file_keeps_empty_lines_and_line_count(overfit_run, tmp_path):
    corpus, run, _ = overfit_run
    src = _lines(corpus / "train.en")[:6]
    lines = ["", src[0], "   ", src[1], "", *src[2:]]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = mt(
        "translate",
        f"run_dir={run}",
        f"input={tmp_path / 'in.txt'}",
        f"output={tmp_path / 'out.txt'}",
        "decode.beam=3",
    )
    assert result.returncode == 0, result.stderr
    out = _lines(tmp_path / "out.txt")
    assert len(out) == len(lines)
    assert out[0] == "" and out[2] == "" and out[4] == ""
    assert out[1] == _lines(corpus / "train.de")[0]


def test_stdin_streams_to_stdout(overfit_run):
    corpus, run, _ = overfit_run
    src, tgt = _lines(corpus / "train.en"), _lines(corpus / "train.de")
    proc = subprocess.Popen(
        [
            *MT.split(),
            "translate",
            f"run_dir={run}",
            "input=-",
            "output=-",
            "decode.beam=1",
            "decode.buffer_lines=1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the first translation arrives while stdin is still open: output streams
    proc.stdin.write(src[0] + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().rstrip("\n") == tgt[0]
    proc.stdin.write(src[1] + "\n")
    proc.stdin.close()
    assert proc.stdout.read().splitlines() == [tgt[1]]
    assert proc.wait(timeout=60) == 0


def test_nbest_output_format(overfit_run, tmp_path):
    corpus, run, _ = overfit_run
    (tmp_path / "in.txt").write_text("\n".join(_lines(corpus / "train.en")[:2]) + "\n")
    result = mt(
        "translate",
        f"run_dir={run}",
        f"input={tmp_path / 'in.txt'}",
        "output=-",
        "decode.beam=3",
        "decode.nbest=2",
    )
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [r[0] for r in rows] == ["1", "1", "2", "2"]
    assert float(rows[0][1]) >= float(rows[1][1])


def test_long_input_is_truncated_with_a_warning(overfit_run, tmp_path):
    _, run, _ = overfit_run
    (tmp_path / "in.txt").write_text("ok\n" + "the man " * 800 + "\n")
    result = mt("translate", f"run_dir={run}", f"input={tmp_path / 'in.txt'}", "output=-")
    assert result.returncode == 0, result.stderr
    assert "in.txt:2:" in result.stderr and "truncated" in result.stderr
    assert len(result.stdout.splitlines()) == 2


def test_bad_utf8_input_names_file_and_line(overfit_run, tmp_path):
    _, run, _ = overfit_run
    (tmp_path / "in.txt").write_bytes(b"fine\n\xc3\x28 bad\n")
    result = mt("translate", f"run_dir={run}", f"input={tmp_path / 'in.txt'}", "output=-")
    assert_clean_error(result, "in.txt:2:", "not valid UTF-8")


def test_vocabulary_mismatch_is_a_clear_error(overfit_run, tmp_path, prepared_dir):
    import shutil

    _, run, _ = overfit_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.copy(prepared_dir / "spm.model", copy / "spm.model")  # another corpus' vocabulary
    with pytest.raises(MTError, match="another vocabulary"):
        load_run(copy, None, None)


def test_translation_batches_respect_both_limits():
    import numpy as np

    from mt.data import batches_by_tokens

    lengths = np.array([5, 1, 9, 3, 3, 7])
    order = np.argsort(lengths, kind="stable")
    batches = batches_by_tokens(order, lengths, max_tokens=12, max_sentences=2)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    for b in batches:
        assert len(b) <= 2 and (len(b) == 1 or lengths[b].max() * len(b) <= 12)


def test_read_buffers_chunks_lines(tmp_path):
    (tmp_path / "f").write_text("a\nb\r\nc\n")
    assert list(read_buffers([str(tmp_path / "f")], 2)) == [
        (str(tmp_path / "f"), 1, ["a", "b"]),
        (str(tmp_path / "f"), 3, ["c"]),
    ]


def test_line_ends_inside_a_translation_become_spaces():
    text = "a\nb\rc\x0bd\x0ce\x1cf\x85g\u2028h\u2029i"
    assert one_line(text).splitlines() == ["a b c d e f g h i"]


def test_input_is_normalized_as_the_training_data_was_prepared(tmp_path):
    """A run trained with data_dir= normalizes input with the form its data was prepared with.

    NFKC spells the ligature U+FB01 as "fi"; NFC keeps it. Training with `data_dir=` leaves the
    train config's own `clean.normalize` at its default (NFC), which must not win.
    """
    import torch

    from mt.prepare import run_prepare
    from mt.train import run_train
    from tests.conftest import prepare_config, train_config, write_corpus

    corpus = write_corpus(tmp_path / "c", {"train": 60, "valid": 4, "test": 4})
    run_prepare(prepare_config(corpus, tmp_path / "data", "clean.normalize=NFKC"))
    run_train(train_config(tmp_path / "data", tmp_path / "run", "train.max_steps=1"))
    run = load_run(tmp_path / "run", None, torch.device("cpu"))
    assert run.normalize_form == "NFKC"
    assert prepare_ids(run, ["\ufb01sh"], "<t>", 1) == prepare_ids(run, ["fish"], "<t>", 1)


def test_int8_translates_like_fp32_and_leaves_the_loaded_model_alone(overfit_run):
    import torch

    corpus, run_dir, _ = overfit_run
    src, tgt = _lines(corpus / "train.en"), _lines(corpus / "train.de")
    run = load_run(run_dir, None, torch.device("cpu"))
    int8 = TorchTranslator(run, DecodeConfig(), torch.device("cpu"), "int8")
    kinds = {type(m).__module__ for m in int8.run.model.modules()}
    assert any("quantized" in kind for kind in kinds)  # its linear layers are int8 ones
    assert not any("quantized" in type(m).__module__ for m in run.model.modules())
    found = [hyps[0][0] for hyps in int8.translate(src)]
    same = sum(a == b for a, b in zip(found, tgt, strict=True))
    assert same >= 0.9 * len(tgt), f"{same} of {len(tgt)} training targets recovered in int8"


def test_unknown_precision_is_a_clear_error(overfit_run):
    _, run, _ = overfit_run
    result = mt("translate", f"run_dir={run}", "input=-", "output=-", "precision=int4", stdin="a\n")
    assert_clean_error(result, "precision='int4' is not one of")
