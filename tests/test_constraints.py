"""Lexically constrained beam search: every phrase appears, unconstrained lines are unchanged."""

from __future__ import annotations

import pytest
import torch

from mt.config import DecodeConfig
from mt.decode.beam import beam_search
from mt.decode.constraints import (
    Constraints,
    ConstraintState,
    advance,
    allowed,
    contains,
    stripe_order,
)
from mt.decode.engine import make_translator
from mt.decode.search import Limits
from mt.decode.torch_engine import TorchTranslator
from mt.model import transformer
from mt.tokenizer import BOS_ID as BOS
from mt.tokenizer import EOS_ID as EOS
from tests.test_cli import assert_clean_error, mt
from tests.test_prefix import _lines, _logprob
from tests.test_search import BOS as S_BOS
from tests.test_search import EOS as S_EOS
from tests.test_search import FakeDecoder, X, Y, batch, check, script

CPU = torch.device("cpu")


def _random_model(seed: int, vocab: int = 40):
    torch.manual_seed(seed)
    return transformer(
        src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=32, n_heads=4, n_layers_enc=1,
        n_layers_dec=2, d_ff=64, dropout=0.0, max_positions=64,
    ).eval()  # fmt: skip


def _sources(n: int, length: int, vocab: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (n, length), generator=g)
    src[:, -1] = EOS
    return src


def _state(cons: Constraints, met: list[list[bool]], cur: list[int], pos: list[int]):
    """A one-sentence state of len(cur) hypotheses."""
    return ConstraintState(
        torch.tensor([met]), torch.tensor([cur]), torch.tensor([pos])
    ), torch.zeros(1, dtype=torch.long)


def test_advance_tracks_phrases_in_progress_breaks_and_single_tokens():
    cons = Constraints.from_lists([[[5, 6, 7], [9], [5, 8]]])
    state, sent = _state(cons, [[False] * 3] * 5, [-1, 0, 0, 0, -1], [0, 1, 2, 1, 0])
    parents = torch.tensor([[0, 1, 2, 3, 4]])
    tokens = torch.tensor([[5, 6, 7, 4, 9]])
    new = advance(cons, sent, state, parents, tokens)
    # 0 starts phrase 0; 1 continues it; 2 completes it; 3 breaks it; 4 meets the 1-token phrase
    assert new.cur.tolist() == [[0, 0, -1, -1, -1]]
    assert new.pos.tolist() == [[1, 2, 0, 0, 0]]
    assert new.met[0, :, 0].tolist() == [False, False, True, False, False]
    assert new.met[0, :, 1].tolist() == [False, False, False, False, True]
    assert new.progress(cons, sent).tolist() == [[1, 2, 3, 0, 1]]
    # inside a phrase only its next token helps; outside, the first token of each unmet one
    assert allowed(cons, sent, new)[0].tolist() == [[6, -1, -1], [7, -1, -1], [-1, 9, 5],
                                                    [5, 9, 5], [5, -1, 5]]  # fmt: skip


def test_a_met_phrase_is_not_started_again_and_a_break_can_start_another():
    cons = Constraints.from_lists([[[5, 6], [6, 3]]])
    state, sent = _state(cons, [[True, False], [False, False]], [-1, 0], [0, 1])
    new = advance(cons, sent, state, torch.tensor([[0, 1]]), torch.tensor([[5, 3]]))
    assert new.cur.tolist() == [[-1, -1]]  # 5 starts nothing once phrase 0 is met; 3 breaks
    new = advance(cons, sent, state, torch.tensor([[1]]), torch.tensor([[6]]))
    assert new.met[0, 0].tolist() == [True, False]  # 5 then 6: phrase 0 met, not phrase 1 begun


MISSED = {  # the beam's best output [X] has no Y; the constraint Y must win anyway
    (0, ()): {X: 0.7, Y: 0.2, S_EOS: 0.1},
    (0, (X,)): {S_EOS: 0.8, X: 0.1, Y: 0.1},
    (0, (Y,)): {S_EOS: 0.9, X: 0.05, Y: 0.05},
    (0, (X, X)): {S_EOS: 0.5, X: 0.25, Y: 0.25},
    (0, (X, Y)): {S_EOS: 1.0},
}


def test_a_constraint_the_plain_beam_misses_by_hand():
    src, mask = batch([4])
    limits = Limits(S_BOS, S_EOS)
    (plain,) = beam_search(FakeDecoder(script(MISSED)), src, mask, limits, beam=2, nbest=2)
    # step 0: X .7, Y .2 live (eos .1 ranks 3rd); step 1: X-eos .56 and Y-eos .18 finish, the
    # best live .07 / (8/6) cannot beat them: [X] log .56 / (7/6), [Y] log .18 / (7/6)
    check(plain[0], [X], 0.56, -0.49699)
    check(plain[1], [Y], 0.18, -1.46983)
    (steered,) = beam_search(
        FakeDecoder(script(MISSED)), src, mask, limits, beam=2, nbest=2,
        constraints=Constraints.from_lists([[[Y]]]),
    )  # fmt: skip
    # step 0: banks {met: Y .2}, {unmet: X .7} share the beam (eos is banned while unmet)
    # step 1: Y-eos .18 finishes first (bank "met"); XX .07 (unmet) and XY .07 (met) live
    # step 2: XY-eos .07 finishes, log .07 / (8/6); live XXY, XXX .0175 / (9/6) lose: stop
    check(steered[0], [Y], 0.18, -1.46983)
    check(steered[1], [X, Y], 0.07, -1.99444)


def test_stripe_order_deals_the_beam_across_banks():
    progress = torch.tensor([[0, 0, 0, 1, 1, 2, 0]])
    scores = torch.tensor([[-1.0, -2.0, -3.0, -4.0, -5.0, -9.0, float("-inf")]])
    order = stripe_order(progress, scores, n_banks=3)
    # best of bank 2, of bank 1, of bank 0; then the second best of banks 1 and 0; -inf last
    assert order[0].tolist() == [5, 3, 0, 4, 1, 2, 6]


@pytest.mark.parametrize("beam", [1, 4])
def test_every_phrase_appears_and_lines_without_constraints_are_unchanged(beam):
    model, src = _random_model(0), _sources(6, 9)
    limits = Limits(BOS, EOS, max_len=40)
    phrases = [[[10, 11], [20]], [], [[30, 31, 32]], [], [[7, 8], [7, 9]], [[22, 22, 22]]]
    free = beam_search(model, src, src == 0, limits, beam=beam, nbest=beam)
    steered = beam_search(
        model, src, src == 0, limits, beam=beam, nbest=beam,
        constraints=Constraints.from_lists(phrases),
    )  # fmt: skip
    for r, (wanted, plain, hyps) in enumerate(zip(phrases, free, steered, strict=True)):
        if not wanted:
            assert [h.tokens for h in hyps] == [h.tokens for h in plain]
            continue
        assert len(hyps) == beam and hyps[0].complete
        assert [h.complete for h in hyps] == sorted((h.complete for h in hyps), reverse=True)
        for hyp in hyps:  # n-best lists fill up with incomplete ones only after the complete
            if hyp.complete:
                assert all(contains(hyp.tokens, p) for p in wanted), hyp.tokens
            scored = _logprob(model, src[r, :-1].tolist(), hyp.tokens)
            assert hyp.logprob == pytest.approx(scored, abs=1e-4)


def test_a_cap_too_short_for_the_constraints_ends_the_output_marked_incomplete():
    model, src = _random_model(1), _sources(2, 5)
    limits = Limits(BOS, EOS, max_len_a=0.0, max_len_b=3)  # 3 tokens before eos
    phrases = [[[10, 11], [12, 13]], [[10, 11]]]
    found = beam_search(
        model, src, src == 0, limits, beam=4, constraints=Constraints.from_lists(phrases)
    )
    too_long, fits = found[0][0], found[1][0]
    assert not too_long.complete and len(too_long.tokens) <= 3
    assert fits.complete and contains(fits.tokens, [10, 11])


def test_translated_text_holds_each_line_s_phrases(overfit_loaded, overfit_run):
    corpus, _, _ = overfit_run
    src = _lines(corpus / "train.en")[:8]
    translator = TorchTranslator(overfit_loaded, DecodeConfig(beam=5), CPU, "fp32")
    free = [h[0][0] for h in translator.translate(src)]
    # "Zebrafisch" is in no training sentence: SentencePiece encodes it like any text
    wanted = [["Hund"], [], ["rot", "Apfel"], [], ["Straße"], ["Katze"], ["Zebrafisch"], ["blau"]]
    steered = [h[0][0] for h in translator.translate(src, constraints=wanted)]
    for text, plain, phrases in zip(steered, free, wanted, strict=True):
        if not phrases:
            assert text == plain
        for phrase in phrases:
            assert phrase in text, (text, phrases)


def test_constraints_file_through_the_cli(overfit_run, tmp_path):
    corpus, run, _ = overfit_run
    src = _lines(corpus / "train.en")[:4]
    (tmp_path / "src.en").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "terms.de").write_text("Hund\tKatze\n\nrot\n\n", encoding="utf-8")
    common = [f"run_dir={run}", "device=cpu", f"input={tmp_path / 'src.en'}"]
    ok = mt("translate", *common, f"output={tmp_path / 'out'}",
            f"decode.constraints={tmp_path / 'terms.de'}")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    out = _lines(tmp_path / "out")
    assert len(out) == 4 and "Hund" in out[0] and "Katze" in out[0] and "rot" in out[2]
    (tmp_path / "long.de").write_text(" ".join(["Hund"] * 80) + "\n" * 4, encoding="utf-8")
    warned = mt("translate", *common, "output=-", f"decode.constraints={tmp_path / 'long.de'}")
    assert warned.returncode == 0, warned.stderr
    assert "src.en:1: the constraints have 80 tokens" in warned.stderr
    assert "src.en:1: the output reached its length limit" in warned.stderr
    (tmp_path / "short.de").write_text("Hund\n", encoding="utf-8")
    short = mt("translate", *common, "output=-", f"decode.constraints={tmp_path / 'short.de'}")
    assert_clean_error(short, "decode.constraints", "fewer lines than the input")
    sampled = mt("translate", *common, "output=-", "decode.sampling=true",
                 f"decode.constraints={tmp_path / 'terms.de'}")  # fmt: skip
    assert_clean_error(sampled, "decode.constraints needs beam search")


def test_ctranslate2_refuses_constraints_by_name(overfit_loaded):
    pytest.importorskip("ctranslate2")
    from mt.errors import MTError

    with pytest.raises(MTError, match="decode.constraints"):
        make_translator(overfit_loaded, DecodeConfig(constraints="x"), CPU, "fp32", "ctranslate2")
