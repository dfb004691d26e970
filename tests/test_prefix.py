"""Target prefixes: every output starts with its prefix and continues from there."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mt.config import DecodeConfig
from mt.decode.beam import beam_search
from mt.decode.engine import make_translator
from mt.decode.greedy import greedy_search
from mt.decode.search import Limits
from mt.decode.torch_engine import TorchTranslator
from mt.tokenizer import BOS_ID, EOS_ID
from tests.test_cli import assert_clean_error, mt

CPU = torch.device("cpu")


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def _logprob(model, src: list[int], out: list[int]) -> float:
    """The model's log-prob of `out` + eos given `src`, by teacher forcing."""
    s, t_in = torch.tensor([[*src, EOS_ID]]), torch.tensor([[BOS_ID, *out]])
    with torch.no_grad():
        lprobs = F.log_softmax(model(s, s == 0, t_in)[0].float(), dim=-1)
    return float(lprobs[torch.arange(len(out) + 1), [*out, EOS_ID]].sum())


@pytest.mark.parametrize("beam", [1, 4])
def test_outputs_start_with_the_prefix_and_score_it(overfit_loaded, overfit_run, beam):
    corpus, _, _ = overfit_run
    src_lines = _lines(corpus / "train.en")[:8]
    src_ids = overfit_loaded.src_tok.encode(src_lines)
    forced = overfit_loaded.tgt_tok.encode(
        ["Straße Apfel", "", "Hund", "ein ein ein", "", "rot", "", "x"]
    )
    width = max(map(len, forced))
    prefix = torch.full((8, width), -1, dtype=torch.long)
    for r, seq in enumerate(forced):
        prefix[r, : len(seq)] = torch.tensor(seq)
    src = torch.zeros(8, max(map(len, src_ids)) + 1, dtype=torch.long)
    for r, seq in enumerate(src_ids):
        src[r, : len(seq) + 1] = torch.tensor([*seq, EOS_ID])
    limits = Limits(BOS_ID, EOS_ID, max_len=63)
    model = overfit_loaded.model
    if beam == 1:
        found = greedy_search(model, src, src == 0, limits, prefix)
        free = greedy_search(model, src, src == 0, limits)
    else:
        found = [h[0] for h in beam_search(model, src, src == 0, limits, beam=4, prefix=prefix)]
        free = [h[0] for h in beam_search(model, src, src == 0, limits, beam=4)]
    for r, (hyp, unforced) in enumerate(zip(found, free, strict=True)):
        assert hyp.tokens[: len(forced[r])] == forced[r]
        if not forced[r]:  # no prefix: the output is the free one
            assert hyp.tokens == unforced.tokens
        assert hyp.logprob == pytest.approx(_logprob(model, src_ids[r], hyp.tokens), abs=1e-4)


def test_a_prefix_of_the_free_output_gives_the_free_output(overfit_loaded, overfit_run):
    corpus, _, _ = overfit_run
    src = _lines(corpus / "train.en")[:16]
    translator = TorchTranslator(overfit_loaded, DecodeConfig(beam=4), CPU, "fp32")
    free = [h[0][0] for h in translator.translate(src)]
    prefixes = [" ".join(text.split()[:2]) for text in free]
    steered = [h[0][0] for h in translator.translate(src, prefixes=prefixes)]
    assert steered == free


def test_ctranslate2_follows_the_prefix_like_mt(overfit_loaded, overfit_run):
    pytest.importorskip("ctranslate2")
    corpus, _, _ = overfit_run
    src = _lines(corpus / "train.en")[:16]
    prefixes = ["Hund", "", "rot rot", "Apfel"] * 4
    decode = DecodeConfig(beam=1)
    ours = TorchTranslator(overfit_loaded, decode, CPU, "fp32").translate(src, prefixes=prefixes)
    theirs = make_translator(overfit_loaded, decode, CPU, "fp32", "ctranslate2").translate(
        src, prefixes=prefixes
    )
    assert [h[0][0] for h in theirs] == [h[0][0] for h in ours]
    for a, b in zip(ours, theirs, strict=True):
        assert a[0][1] == pytest.approx(b[0][1], abs=1e-3)


def test_prefix_file_and_tsv_input_through_the_cli(overfit_run, tmp_path):
    corpus, run, _ = overfit_run
    src = _lines(corpus / "train.en")[:6]
    prefixes = ["Hund", "", "rot", "", "Katze Katze", ""]
    (tmp_path / "src.en").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "prefix.de").write_text("\n".join(prefixes) + "\n", encoding="utf-8")
    tsv = "\n".join(f"{s}\t{p}" for s, p in zip(src, prefixes, strict=True)) + "\n"
    (tmp_path / "in.tsv").write_text(tsv, encoding="utf-8")
    common = [f"run_dir={run}", "decode.beam=2", "device=cpu"]
    a = mt("translate", *common, f"input={tmp_path / 'src.en'}", f"output={tmp_path / 'a'}",
           f"decode.prefix={tmp_path / 'prefix.de'}")  # fmt: skip
    b = mt("translate", *common, f"input={tmp_path / 'in.tsv'}", f"output={tmp_path / 'b'}",
           "input_format=tsv")  # fmt: skip
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    out = _lines(tmp_path / "a")
    assert out == _lines(tmp_path / "b") and len(out) == 6
    for text, prefix in zip(out, prefixes, strict=True):
        assert text.startswith(prefix)
    (tmp_path / "short.de").write_text("Hund\n", encoding="utf-8")
    short = mt("translate", *common, f"input={tmp_path / 'src.en'}", "output=-",
               f"decode.prefix={tmp_path / 'short.de'}")  # fmt: skip
    assert_clean_error(short, "fewer lines than the input")
    (tmp_path / "long.de").write_text(" ".join(["Hund"] * 80) + "\n" * 6, encoding="utf-8")
    long = mt("translate", *common, f"input={tmp_path / 'src.en'}", "output=-",
              f"decode.prefix={tmp_path / 'long.de'}")  # fmt: skip
    assert_clean_error(long, "src.en:1", "target prefix has 80 tokens")
