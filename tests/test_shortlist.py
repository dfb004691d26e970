"""decode.shortlist: search over a per-batch shortlist of output ids (mt.shortlist)."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from mt.config import ConfigError, DecodeConfig, model_preset, validate_decode
from mt.decode.beam import beam_search
from mt.decode.constraints import Constraints
from mt.decode.greedy import greedy_search
from mt.decode.layout import quantize_int8
from mt.decode.run import load_run
from mt.decode.search import Limits
from mt.decode.shortlist import TABLE, ShortlistTable, build_table, load_shortlist
from mt.decode.torch_engine import TorchTranslator
from mt.errors import MTError
from mt.model import transformer
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from tests.test_cli import assert_clean_error, mt

CPU = torch.device("cpu")
V = 40


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    args = dataclasses.asdict(model_preset("tiny"))
    return transformer(src_vocab_size=V, tgt_vocab_size=V, **args).eval()


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(1)
    lengths = torch.tensor([7, 4, 9, 2])
    mask = torch.arange(9).unsqueeze(0) >= lengths.unsqueeze(1)  # [B, S], True at padding
    src = torch.randint(4, V, mask.shape).masked_fill(mask, PAD_ID)
    return src, mask


LIMITS = Limits(BOS_ID, EOS_ID, max_len_a=1.0, max_len_b=4)


def _search(model, batch, how: str, vocab=None):
    """n-best (tokens, score, logprob) lists of one search setup."""
    src, mask = batch
    extra = {} if vocab is None else {"vocab": vocab}
    prefix = torch.tensor([[5, 6], [7, -1], [-1, -1], [8, 9]])
    if how == "greedy":
        found = [[h] for h in greedy_search(model, src, mask, LIMITS, **extra)]
    elif how == "greedy_prefix_norepeat":
        found = greedy_search(model, src, mask, LIMITS, prefix, no_repeat_ngram=2, **extra)
        found = [[h] for h in found]
    elif how == "beam":
        found = beam_search(model, src, mask, LIMITS, beam=4, nbest=3, **extra)
    elif how == "beam_prefix_norepeat":
        found = beam_search(
            model, src, mask, LIMITS, beam=3, nbest=2, prefix=prefix, no_repeat_ngram=2, **extra
        )
    else:
        cons = Constraints.from_lists([[[11, 12]], [], [[13]], [[14], [15]]])
        found = beam_search(model, src, mask, LIMITS, beam=4, nbest=2, constraints=cons, **extra)
    return [[(h.tokens, h.score, h.logprob, h.complete) for h in hyps] for hyps in found]


SETUPS = ["greedy", "greedy_prefix_norepeat", "beam", "beam_prefix_norepeat", "beam_constraints"]


@pytest.mark.parametrize("how", SETUPS)
def test_a_shortlist_of_the_whole_vocabulary_searches_exactly_as_without(model, batch, how):
    full = _search(model, batch, how)
    assert _search(model, batch, how, vocab=torch.arange(V)) == full


@pytest.mark.parametrize("how", ["greedy", "beam"])
def test_under_bf16_autocast_too(model, batch, how):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = _search(model, batch, how)
        assert _search(model, batch, how, vocab=torch.arange(V)) == full


@pytest.mark.parametrize("how", ["greedy", "beam", "beam_constraints"])
def test_in_int8_too(model, batch, how):
    int8 = quantize_int8(model)  # its output projection too: the shortlist slices int8 rows
    full = _search(int8, batch, how)
    assert full != _search(model, batch, how)  # int8 logits are not the fp32 ones
    assert _search(int8, batch, how, vocab=torch.arange(V)) == full


@pytest.mark.parametrize("how", ["greedy", "beam"])
def test_outputs_hold_only_shortlisted_ids(model, batch, how):
    vocab = torch.tensor([BOS_ID, EOS_ID, 5, 9, 17, 23, 31])
    full = _search(model, batch, how)
    found = _search(model, batch, how, vocab=vocab)
    assert found != full  # the random model does want other ids
    allowed = set(vocab.tolist())
    for hyps in found:
        for tokens, _, logprob, _ in hyps:
            assert set(tokens) <= allowed
            assert logprob <= 0.0


def test_shortlisted_logits_are_the_full_logits_of_those_ids(model, batch):
    src, mask = batch
    vocab = torch.tensor([1, 2, 3, 10, 20, 30])
    memory = model.encode(src, mask)
    full_state = model.init_state(memory, mask, 4)
    short_state = model.init_state(memory, mask, 4, vocab=vocab)
    with torch.no_grad():
        full = model.decode_step(torch.full((4,), BOS_ID), full_state)
        short = model.decode_step(torch.full((4,), 1), short_state)  # position of bos in vocab
        torch.testing.assert_close(short, full[:, vocab])
        full = model.decode_step(torch.full((4,), 20), full_state)
        short = model.decode_step(torch.full((4,), 4), short_state)  # 20 is vocab[4]
    torch.testing.assert_close(short, full[:, vocab])


def test_a_shortlist_without_eos_or_a_prefix_token_is_refused(model, batch):
    src, mask = batch
    with pytest.raises(ValueError, match="lacks id 3 of the bos/eos"):
        greedy_search(model, src, mask, LIMITS, vocab=torch.tensor([BOS_ID, 5, 6]))
    with pytest.raises(ValueError, match="lacks id 9 of the target prefix"):
        prefix = torch.tensor([[5], [9], [-1], [-1]])
        beam_search(model, src, mask, LIMITS, beam=2, prefix=prefix,
                    vocab=torch.tensor([BOS_ID, EOS_ID, 5]))  # fmt: skip
    with pytest.raises(ValueError, match="sorted"):
        greedy_search(model, src, mask, LIMITS, vocab=torch.tensor([EOS_ID, BOS_ID]))


# --- the table, from a tiny word-by-word corpus (conftest: German = English word by word) ---


@pytest.fixture(scope="module")
def table(prepared_dir) -> ShortlistTable:
    return build_table(prepared_dir)


def test_each_source_word_ranks_its_translation_first(prepared_dir, table):
    """Word-by-word pairs: a source word's translation is in every pair it is in."""
    from tests.conftest import DE, EN

    tok = Tokenizer(prepared_dir / "spm.model")
    whole = [(s, t) for s, t in zip(tok.encode(EN), tok.encode(DE), strict=True)
             if len(s) == len(t) == 1]  # fmt: skip
    assert len(whole) >= 10  # words that are one piece on both sides
    for (s,), (t,) in whole:
        assert table.per_source[s, 0] == t


def test_the_frequent_list_counts_target_tokens(prepared_dir, table):
    from mt.shards import Shard

    tgt = Shard.load(prepared_dir, "train", "tgt")
    counts = torch.bincount(torch.from_numpy(tgt.tokens.astype("int64")))
    top = table.frequent[:5]
    assert sorted(counts[top].tolist(), reverse=True) == counts[top].tolist()
    assert counts[top[0]] == counts.max()
    assert sorted(table.frequent.tolist()) == list(range(len(table.frequent)))


@pytest.mark.parametrize(("k", "n"), [(0, 0), (1, 0), (0, 3), (10, 5)])
def test_candidates_are_sorted_and_always_hold_eos(prepared_dir, table, k, n):
    from mt.shards import Shard

    first, second = (Shard.load(prepared_dir, "train", "src")[i].tolist() for i in (0, 1))
    src = torch.full((2, max(len(first), len(second)) + 1), PAD_ID)
    src[0, : len(first) + 1] = torch.tensor([*first, EOS_ID])
    src[1, : len(second) + 1] = torch.tensor([*second, EOS_ID])
    cand = table.candidates(src, k, n, always={BOS_ID, EOS_ID, UNK_ID})
    assert EOS_ID in cand.tolist() and BOS_ID in cand.tolist()
    assert cand.tolist() == sorted(set(cand.tolist()))
    frequent = set(table.frequent[:k].tolist())
    added = set()
    for s in set(first + second):  # each one's n most co-occurring ids outside the k frequent
        added.update([t for t in table.per_source[s].tolist() if t >= 0 and t not in frequent][:n])
    assert n == 0 or added
    assert set(cand.tolist()) == frequent | added | {BOS_ID, EOS_ID, UNK_ID}


# --- through the translator and the CLI, on a copy of the overfit run --------------------------


@pytest.fixture(scope="module")
def run_copy(overfit_run, tmp_path_factory):
    """The overfit run copied, so its shortlist.pt stays out of the shared run folder."""
    _, run, _ = overfit_run
    copy = tmp_path_factory.mktemp("shortlist") / "run"
    shutil.copytree(run, copy)
    return copy


def _translate(run_dir, lines, **decode):
    loaded = load_run(run_dir, None, CPU)
    return TorchTranslator(loaded, DecodeConfig(**decode), CPU, "fp32").translate(lines)


@pytest.mark.parametrize("beam", [1, 4])
def test_a_shortlist_as_large_as_the_vocabulary_translates_exactly_as_without(
    overfit_run, run_copy, beam
):
    corpus, _, _ = overfit_run
    lines = _lines(corpus / "train.en")[:12] + ["red big house green cat"]
    nbest = min(beam, 3)
    full = _translate(run_copy, lines, beam=beam, nbest=nbest)
    assert _translate(run_copy, lines, beam=beam, nbest=nbest, shortlist=10_000) == full
    assert (run_copy / TABLE).is_file()


def test_the_translator_shortlist_holds_eos_prefix_and_constraint_ids(run_copy):
    loaded = load_run(run_copy, None, CPU)
    translator = TorchTranslator(
        loaded, DecodeConfig(shortlist=1, shortlist_per_source=0), CPU, "fp32"
    )
    src = torch.tensor([[40, 41, EOS_ID]])
    cand = translator._candidates(src, [[100, 101]], [[[102], [103, 104]]]).tolist()
    assert {BOS_ID, EOS_ID, UNK_ID, 100, 101, 102, 103, 104} <= set(cand)
    assert len(cand) <= 9  # the one most frequent id besides


def test_cli_translate_with_a_shortlist(overfit_run, run_copy, tmp_path):
    corpus, _, _ = overfit_run
    (run_copy / TABLE).unlink(missing_ok=True)  # counted on first use
    src, tgt = _lines(corpus / "train.en")[:8], _lines(corpus / "train.de")[:8]
    (tmp_path / "in.txt").write_text("\n".join(src) + "\n", encoding="utf-8")
    for beam in ("1", "3"):
        result = mt("translate", f"run_dir={run_copy}", f"input={tmp_path / 'in.txt'}",
                    "output=-", f"decode.beam={beam}", "decode.shortlist=20")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == tgt
    assert (run_copy / TABLE).is_file()


def test_a_stale_table_is_counted_again(run_copy):
    loaded = load_run(run_copy, None, CPU)
    sha256 = {"src": loaded.src_tok.sha256(), "tgt": loaded.tgt_tok.sha256()}
    other = ShortlistTable(torch.arange(3), torch.full((3, 2), -1), {"src": "x", "tgt": "y"})
    other.save(run_copy / TABLE)
    assert load_shortlist(run_copy, sha256).sha256 == sha256
    assert ShortlistTable.load(run_copy / TABLE).sha256 == sha256


def test_sampling_with_a_shortlist_is_one_sentence(run_copy):
    result = mt("translate", f"run_dir={run_copy}", "input=-", "output=-", "decode.shortlist=20",
                "decode.sampling=true", stdin="a man\n")  # fmt: skip
    assert_clean_error(result, "decode.shortlist", "decode.sampling=true")


def test_an_ensemble_and_ctranslate2_refuse_a_shortlist(run_copy):
    from mt.decode.engine import make_translator

    final = str(run_copy / "checkpoints" / "final.pt")
    decode = DecodeConfig(shortlist=20)
    with pytest.raises(MTError, match=r"^decode.shortlist decodes one checkpoint"):
        TorchTranslator(load_run(run_copy, [final, final], CPU), decode, CPU, "fp32")
    with pytest.raises(MTError, match=r"^decode.shortlist needs engine=torch"):
        make_translator(load_run(run_copy, None, CPU), decode, CPU, "fp32", "ctranslate2")


def test_a_run_without_its_training_data_is_one_sentence(run_copy, tmp_path):
    moved = tmp_path / "run"
    shutil.copytree(run_copy, moved)
    (moved / TABLE).unlink(missing_ok=True)
    config = moved / "config.yaml"
    config.write_text(
        "\n".join(
            f"data_dir: {tmp_path / 'gone'}" if line.startswith("data_dir:") else line
            for line in config.read_text(encoding="utf-8").splitlines()
        )
        + "\n",
        encoding="utf-8",
    )
    result = mt("translate", f"run_dir={moved}", "input=-", "output=-", "decode.shortlist=20",
                stdin="a man\n")  # fmt: skip
    assert_clean_error(result, "decode.shortlist", "training data")


@pytest.mark.parametrize(
    ("key", "value"),
    [("shortlist", -1), ("shortlist_per_source", -1), ("shortlist_per_source", 257)],
)
def test_bad_shortlist_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"decode.{key}={value}"):
        validate_decode(DecodeConfig(**{key: value}))
