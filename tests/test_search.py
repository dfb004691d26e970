"""Search against a scripted fake decoder whose next-token probabilities are written by hand.

Like fairseq's tests/utils.py ``sequence_generator_setup``, but the script is keyed by
(sentence, prefix) instead of beam slot, so it cannot depend on how search orders its rows.
Expected hypotheses and scores are worked out in comments; score = log p / ((5 + len) / 6) ** lenpen
with len = output tokens + eos.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from mt.config import model_preset
from mt.decode.beam import beam_search
from mt.decode.greedy import greedy_search, sample
from mt.decode.search import Hypothesis, Limits, length_penalty

PAD, UNK, BOS, EOS, X, Y = 0, 1, 2, 3, 4, 5
V = 6

# (sentence index, output prefix without bos) -> next-token probabilities [V]
ProbsFn = Callable[[int, tuple[int, ...]], list[float]]


class FakeState:
    """Rows of the fake decoder: which sentence each row decodes and the tokens fed so far."""

    def __init__(self, sent: Tensor, max_len: int) -> None:
        self.sent = sent  # [N]
        self.fed = torch.empty(len(sent), 0, dtype=torch.long)  # [N, step], bos first
        self.max_len = max_len
        self.step = 0
        self.rows_per_step: list[int] = []
        self.rows_per_source = 1

    def reorder(self, sources: Tensor, beams: Tensor | None = None) -> None:
        """The layout of mt.model.DecoderState: row b*K + j is slot j of source b; beams
        [B', K'] leave K' rows per source (beam search's first step repeats one into K)."""
        k = self.rows_per_source
        index = sources if beams is None else (sources.unsqueeze(1) * k + beams).view(-1)
        assert index.dtype == torch.long and bool((index < self.sent.numel()).all())
        assert beams is None or k in (1, beams.shape[1])  # only a first step changes K
        self.sent, self.fed = self.sent[index], self.fed[index]
        self.rows_per_source = 1 if beams is None else beams.shape[1]


class FakeDecoder:
    """encode/init_state/decode_step returning the log of scripted probabilities."""

    def __init__(self, probs: ProbsFn) -> None:
        self.probs = probs
        self.states: list[FakeState] = []

    def encode(self, src: Tensor, src_pad_mask: Tensor) -> Tensor:
        return torch.arange(src.size(0)).unsqueeze(1)  # "memory" [B, 1]: the sentence index

    def init_state(
        self,
        memory: Tensor,
        src_pad_mask: Tensor,
        max_len: int,
        rows_per_source: int = 1,
        vocab: Tensor | None = None,
    ) -> FakeState:
        assert memory.size(0) == src_pad_mask.size(0) and vocab is None
        rows = memory[:, 0].repeat_interleave(rows_per_source)  # sentence index of each row
        self.states.append(FakeState(rows.clone(), max_len))
        self.states[-1].rows_per_source = rows_per_source
        return self.states[-1]

    def decode_step(self, tokens: Tensor, state: FakeState) -> Tensor:
        assert tokens.shape == state.sent.shape and state.step < state.max_len
        state.fed = torch.cat([state.fed, tokens.unsqueeze(1)], dim=1)
        assert (state.fed[:, 0] == BOS).all()
        state.step += 1
        state.rows_per_step.append(len(tokens))
        rows = zip(state.sent.tolist(), state.fed[:, 1:].tolist(), strict=True)
        return torch.tensor([self.probs(s, tuple(prefix)) for s, prefix in rows]).log()


def dist(probs: dict[int, float], vocab: int = V) -> list[float]:
    """A full probability vector from the listed tokens; the others get 0."""
    out = [0.0] * vocab
    for token, p in probs.items():
        out[token] = p
    assert math.isclose(sum(out), 1.0)
    return out


def script(table: dict[tuple[int, tuple[int, ...]], dict[int, float]]) -> ProbsFn:
    """Strict script: decoding an unlisted (sentence, prefix) fails with KeyError."""
    return lambda sent, prefix: dist(table[sent, prefix])


def random_probs(vocab: int = 8) -> ProbsFn:
    """A fixed random distribution per (sentence, prefix); eos has ~1/vocab chance per step."""

    def probs(sent: int, prefix: tuple[int, ...]) -> list[float]:
        gen = torch.Generator().manual_seed(hash((sent, prefix)) % 2**31)
        return (2 * torch.randn(vocab, generator=gen, dtype=torch.float64)).softmax(0).tolist()

    return probs


def batch(lengths: list[int]) -> tuple[Tensor, Tensor]:
    """Right-padded source ids [B, S] (the fake ignores them) and the pad mask [B, S]."""
    width = max(lengths)
    mask = torch.arange(width).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)
    return torch.full(mask.shape, 7).masked_fill(mask, PAD), mask


def check(hyp: Hypothesis, tokens: list[int], prob: float, score: float) -> None:
    """hyp has these tokens, logprob log(prob) and the hand-computed score."""
    assert hyp.tokens == tokens
    assert hyp.logprob == pytest.approx(math.log(prob), abs=1e-5)
    assert hyp.score == pytest.approx(score, abs=1e-5)


def rescore(probs: ProbsFn, sent: int, tokens: list[int]) -> float:
    """log p(tokens + eos) under the fake, recomputed token by token."""
    total = 0.0
    for i, token in enumerate([*tokens, EOS]):
        total += math.log(probs(sent, tuple(tokens[:i]))[token])
    return total


def test_length_penalty() -> None:
    assert length_penalty(1, 1.0) == pytest.approx(1.0)  # (5+1)/6
    assert length_penalty(2, 1.0) == pytest.approx(7 / 6)
    assert length_penalty(4, 2.0) == pytest.approx(2.25)  # (9/6)**2
    assert length_penalty(9, 0.0) == 1.0


def test_beam_batch_one_sentence_finishes_early() -> None:
    model = FakeDecoder(
        script(
            {
                (0, ()): {X: 0.9, Y: 0.1},
                (0, (X,)): {EOS: 1.0},
                (0, (Y,)): {EOS: 0.6, X: 0.4},
                (1, ()): {X: 0.7, Y: 0.3},
                (1, (X,)): {EOS: 0.25, X: 0.35, Y: 0.4},
                (1, (Y,)): {X: 0.1, Y: 0.9},
                (1, (X, Y)): {EOS: 0.6, X: 0.4},
                (1, (Y, Y)): {EOS: 0.01, Y: 0.99},
                (1, (Y, Y, Y)): {EOS: 0.1, X: 0.5, Y: 0.4},
                (1, (X, Y, X)): {EOS: 1.0},
                (1, (Y, Y, Y, X)): {EOS: 0.6, X: 0.4},
                (1, (Y, Y, Y, Y)): {EOS: 0.9, Y: 0.1},
            }
        )
    )
    src, mask = batch([3, 2])
    out = beam_search(
        model, src, mask, Limits(BOS, EOS, max_len_a=0.0, max_len_b=10), beam=2, nbest=2
    )
    # sentence 0
    # step 0: only row 0 expands: X .9, Y .1 -> both continue
    # step 1: X-eos .9, Y-eos .06, YX .04: top-2 both end in eos
    #   [X]: log .9 = -0.10536, / (7/6) = -0.09031;  [Y]: log .06 = -2.81341, / (7/6) = -2.41149
    #   YX ending next step scores at most log .04 / (8/6) = -2.41418 < -2.41149: done, rows dropped
    check(out[0][0], [X], 0.9, -0.09031)
    check(out[0][1], [Y], 0.06, -2.41149)
    # sentence 1
    # step 0: X .7, Y .3 -> both continue
    # step 1: XY .28, YY .27, XX .245, X-eos .175: the eos is 4th (not in top 2): not finalized
    # step 2: YYY .2673, XY-eos .168, XYX .112, YY-eos .0027
    #   -> finalize [X Y] log .168 = -1.78379, / (8/6) = -1.33784; continue YYY, XYX
    # step 3: YYYX .13365, XYX-eos .112, YYYY .10692, YYY-eos .02673
    #   -> finalize [X Y X] log .112 = -2.18926, / (9/6) = -1.45950: 2 finished, but YYYX
    #   ending next step could score log .13365 / (10/6) = -1.20752 > -1.45950: go on
    # step 4: YYYY-eos .096228, YYYX-eos .08019, YYYXX .05346, YYYYY .010692
    #   -> finalize [Y Y Y Y] log .096228 = -2.34103, / (10/6) = -1.40462 (2nd best so far)
    #   and [Y Y Y X] -2.52336 / (10/6) = -1.51401 (3rd); YYYXX can reach at most
    #   log .05346 / (11/6) = -1.59754 < -1.40462: done
    check(out[1][0], [X, Y], 0.168, -1.33784)
    check(out[1][1], [Y, Y, Y, Y], 0.096228, -1.40462)
    # one row per sentence at the first step (its rows would all be alike), then
    # 2 sentences x 2 beams, then sentence 0's rows leave the state after step 1
    assert model.states[0].rows_per_step == [2, 4, 2, 2, 2]


# step 0: X .5, eos .4, Y .1;  after X: eos .7, X .3;  after Y: eos 1.0
LENPEN_SCRIPT = {
    (0, ()): {EOS: 0.4, X: 0.5, Y: 0.1},
    (0, (X,)): {EOS: 0.7, X: 0.3},
    (0, (Y,)): {EOS: 1.0},
}


@pytest.mark.parametrize("lenpen", [0.0, 1.0])
def test_beam_nbest_sorted_and_lenpen_changes_winner(lenpen: float) -> None:
    model = FakeDecoder(script(LENPEN_SCRIPT))
    src, mask = batch([4])
    (out,) = beam_search(
        model, src, mask, Limits(BOS, EOS, max_len_b=5), beam=2, nbest=2, lenpen=lenpen
    )
    # step 0: X .5, eos .4 (top 2) -> finalize [] log .4 = -0.91629, penalty (6/6)**lenpen = 1
    # step 1: X-eos .35, XX .15, Y-eos .1 -> finalize [X] log .35 = -1.04982: 2 finished, done
    #   lenpen 1: [X] -1.04982 / (7/6) = -0.89985 beats [] -0.91629 (found later, ranked first)
    #   lenpen 0: raw log-probs, [] -0.91629 beats [X] -1.04982
    if lenpen == 1.0:
        ranked = [([X], 0.35, -0.89985), ([], 0.4, -0.91629)]
    else:
        ranked = [([], 0.4, -0.91629), ([X], 0.35, -1.04982)]
    assert len(out) == 2
    for hyp, (tokens, prob, score) in zip(out, ranked, strict=True):
        check(hyp, tokens, prob, score)
    assert out[0].score >= out[1].score


def test_beam_nbest_defaults_to_best_only() -> None:
    src, mask = batch([4])
    (out,) = beam_search(FakeDecoder(script(LENPEN_SCRIPT)), src, mask, Limits(BOS, EOS), beam=2)
    assert [h.tokens for h in out] == [[X]]


def max_length_probs(sent: int, prefix: tuple[int, ...]) -> list[float]:
    """Never keen on eos; the next token depends on the previous one."""
    if not prefix:
        return dist({EOS: 0.1, X: 0.6, Y: 0.3})
    if prefix[-1] == X:
        return dist({EOS: 0.1, X: 0.5, Y: 0.4})
    return dist({EOS: 0.1, X: 0.3, Y: 0.6})


def test_beam_forces_eos_at_max_length() -> None:
    model = FakeDecoder(max_length_probs)
    src, mask = batch([5])
    (out,) = beam_search(
        model, src, mask, Limits(BOS, EOS, max_len_a=0.0, max_len_b=2), beam=2, nbest=2
    )
    # max length 2 = int(0 * 5 + 2) tokens, then eos
    # step 0: X .6, Y .3, eos .1 (3rd: dropped) -> continue X, Y
    # step 1: XX .30, XY .24, YY .18, YX .09 -> continue XX, XY
    # step 2 (max length): only eos, with its own prob .1: XX-eos .03, XY-eos .024
    #   [X X]: log .03 = -3.50656, / (8/6) = -2.62992;  [X Y]: log .024 = -3.72970 -> -2.79728
    check(out[0], [X, X], 0.03, -2.62992)
    check(out[1], [X, Y], 0.024, -2.79728)
    assert model.states[0].rows_per_step == [1, 2, 2]  # the first step: one row per sentence


def test_greedy_forces_eos_at_max_length() -> None:
    src, mask = batch([5])
    (hyp,) = greedy_search(
        FakeDecoder(max_length_probs), src, mask, Limits(BOS, EOS, max_len_a=0.0, max_len_b=2)
    )
    check(hyp, [X, X], 0.6 * 0.5 * 0.1, -2.62992)  # X, X, then forced eos: as beam's best


def test_greedy_drops_finished_rows() -> None:
    model = FakeDecoder(
        script(
            {
                (0, ()): {EOS: 0.6, X: 0.4},
                (1, ()): {X: 0.7, EOS: 0.3},
                (1, (X,)): {Y: 0.8, EOS: 0.2},
                (1, (X, Y)): {EOS: 0.9, X: 0.1},
            }
        )
    )
    src, mask = batch([2, 3])
    out = greedy_search(model, src, mask, Limits(BOS, EOS))
    # sentence 0: eos at step 0: [] log .6 = -0.51083, penalty 1
    # sentence 1: X .7, Y .8, eos .9: [X Y] log .504 = -0.68518, / (8/6) = -0.51388
    # (the strict script has no (0, (EOS,)): the finished row must not be decoded again)
    check(out[0], [], 0.6, -0.51083)
    check(out[1], [X, Y], 0.504, -0.51388)
    assert model.states[0].rows_per_step == [2, 1, 1]


SRC_LENGTHS = [1, 3, 5, 2, 4, 6]  # max lengths int(1.0 * len + 1): 2, 4, 6, 3, 5, 7


def test_beam_one_equals_greedy() -> None:
    model = FakeDecoder(random_probs())
    src, mask = batch(SRC_LENGTHS)
    limits = Limits(BOS, EOS, max_len_a=1.0, max_len_b=1)
    greedy = greedy_search(model, src, mask, limits)
    beam = [hyps[0] for hyps in beam_search(model, src, mask, limits, beam=1)]
    assert [h.tokens for h in beam] == [h.tokens for h in greedy]
    assert [h.score for h in beam] == pytest.approx([h.score for h in greedy], abs=1e-6)
    assert [h.logprob for h in beam] == pytest.approx([h.logprob for h in greedy], abs=1e-6)
    assert any(len(h.tokens) == n + 1 for h, n in zip(greedy, SRC_LENGTHS, strict=True))


@pytest.mark.parametrize("beam", [2, 4])
def test_beam_hypotheses_are_consistent(beam: int) -> None:
    probs = random_probs()
    src, mask = batch(SRC_LENGTHS)
    limits = Limits(BOS, EOS, max_len_a=1.0, max_len_b=1)
    out = beam_search(FakeDecoder(probs), src, mask, limits, beam=beam, nbest=beam, lenpen=0.6)
    for sent, (hyps, n) in enumerate(zip(out, SRC_LENGTHS, strict=True)):
        assert 1 <= len(hyps) <= beam
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert len(h.tokens) <= n + 1
            assert h.logprob == pytest.approx(rescore(probs, sent, h.tokens), abs=1e-4)
            assert h.score == pytest.approx(h.logprob / length_penalty(len(h.tokens) + 1, 0.6))


def test_beam_rejects_nbest_above_beam() -> None:
    src, mask = batch([2])
    with pytest.raises(ValueError, match="nbest"):
        beam_search(FakeDecoder(random_probs()), src, mask, Limits(BOS, EOS), beam=2, nbest=3)


def test_sample_topk_one_equals_greedy() -> None:
    model = FakeDecoder(random_probs())
    src, mask = batch(SRC_LENGTHS)
    greedy = greedy_search(model, src, mask, Limits(BOS, EOS, max_len_a=1.0, max_len_b=1))
    drawn = sample(model, src, mask, Limits(BOS, EOS, max_len_a=1.0, max_len_b=1), topk=1)
    assert [h.tokens for h in drawn] == [h.tokens for h in greedy]
    assert [h.score for h in drawn] == pytest.approx([h.score for h in greedy], abs=1e-6)


# eos .05 and six words; top 3 = {4, 5, 6}; nucleus .5 = {4, 5} (4 and 5 already cover .55)
FLAT = dist({EOS: 0.05, 4: 0.3, 5: 0.25, 6: 0.2, 7: 0.1, 8: 0.06, 9: 0.04}, vocab=10)


@pytest.mark.parametrize(("topk", "topp", "allowed"), [(3, 1.0, {4, 5, 6}), (0, 0.5, {4, 5})])
def test_sample_stays_in_top_k_and_nucleus(topk: int, topp: float, allowed: set[int]) -> None:
    src, mask = batch([3] * 200)
    model = FakeDecoder(lambda sent, prefix: FLAT)
    gen = torch.Generator().manual_seed(0)
    limits = Limits(BOS, EOS, max_len_a=0.0, max_len_b=3)
    out = sample(model, src, mask, limits, topk=topk, topp=topp, generator=gen)
    drawn = [token for h in out for token in h.tokens]
    # eos is outside the allowed set, so every output runs to the max length 3 (then forced eos)
    assert all(len(h.tokens) == 3 for h in out)
    assert set(drawn) == allowed  # 600 draws: every allowed token shows up
    for h in out:  # scored by the model's own probabilities, forced eos included
        expected = sum(math.log(FLAT[t]) for t in h.tokens) + math.log(FLAT[EOS])
        assert h.logprob == pytest.approx(expected, abs=1e-5)


def test_sample_is_reproducible_with_a_seeded_generator() -> None:
    src, mask = batch(SRC_LENGTHS * 5)

    def draw(seed: int) -> list[Hypothesis]:
        gen = torch.Generator().manual_seed(seed)
        limits = Limits(BOS, EOS, max_len_a=1.0)
        return sample(
            FakeDecoder(random_probs()), src, mask, limits, temperature=1.5, generator=gen
        )

    assert draw(1) == draw(1)
    # temperature changes what is drawn, not how it is scored
    for sent, h in enumerate(draw(3)):
        assert h.logprob == pytest.approx(rescore(random_probs(), sent, h.tokens), abs=1e-4)
    assert [h.tokens for h in draw(1)] != [h.tokens for h in draw(2)]


@pytest.mark.parametrize(
    "kwargs", [{"topk": -1}, {"topp": 0.0}, {"topp": 1.5}, {"temperature": 0.0}]
)
def test_sample_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    src, mask = batch([2])
    with pytest.raises(ValueError, match="sample needs"):
        sample(FakeDecoder(random_probs()), src, mask, Limits(BOS, EOS), **kwargs)


def test_real_model_beam_one_equals_greedy() -> None:
    mt_model = pytest.importorskip("mt.model")
    torch.manual_seed(0)
    model = mt_model.transformer(
        src_vocab_size=24, tgt_vocab_size=24, **dataclasses.asdict(model_preset("tiny"))
    ).eval()
    src, mask = batch([7, 4, 1])
    src = torch.randint(4, 24, src.shape).masked_fill(mask, PAD)
    limits = Limits(BOS, EOS, max_len_a=1.0, max_len_b=3)
    greedy = greedy_search(model, src, mask, limits)
    beam = [hyps[0] for hyps in beam_search(model, src, mask, limits, beam=1)]
    assert [h.tokens for h in beam] == [h.tokens for h in greedy]
    assert [h.score for h in beam] == pytest.approx([h.score for h in greedy], abs=1e-4)
    wide = beam_search(model, src, mask, limits, beam=4, nbest=4)
    assert all(1 <= len(hyps) <= 4 for hyps in wide)


class _NeverEnds:
    """A real model whose eos never wins: every output runs to its length cap."""

    def __init__(self, model) -> None:
        self.model = model

    def encode(self, src: Tensor, src_pad_mask: Tensor) -> Tensor:
        return self.model.encode(src, src_pad_mask)

    def init_state(self, *args, **kwargs):
        return self.model.init_state(*args, **kwargs)

    def decode_step(self, tokens: Tensor, state) -> Tensor:
        return self.model.decode_step(tokens, state).index_fill(1, torch.tensor([EOS]), -1e9)


def test_outputs_never_outrun_the_models_positions() -> None:
    from mt.model import transformer

    torch.manual_seed(0)
    args = dict(src_vocab_size=24, tgt_vocab_size=24, d_model=16, n_heads=2, d_ff=32)
    model = _NeverEnds(transformer(**args, n_layers_enc=1, n_layers_dec=1, max_positions=8).eval())
    src, mask = batch([7, 3])
    src = torch.randint(4, 24, src.shape).masked_fill(mask, PAD)
    # a * 7 + b = 31 tokens asked for, but 8 positions hold bos + 7 tokens
    limits = Limits(BOS, EOS, max_len_a=3.0, max_len_b=10, max_len=7)
    assert [len(h.tokens) for h in greedy_search(model, src, mask, limits)] == [7, 7]
    found = beam_search(model, src, mask, limits, beam=3)
    assert [len(hyps[0].tokens) for hyps in found] == [7, 7]
    with pytest.raises(IndexError):  # what the cap prevents
        greedy_search(model, src, mask, dataclasses.replace(limits, max_len=None))


def test_blockwise_top_k_and_argmax_match_torchs() -> None:
    from mt.decode import blockwise

    torch.manual_seed(0)
    x = torch.randn(9, 64 * 160).log_softmax(dim=1)
    x[1, 100:110] = x[1].max()  # ties for the maximum: the first one wins, as with max
    x[2, :] = float("-inf")
    x[2, 5000] = -1.0  # one finite value in a row, the rest -inf (a forced token)
    x[3, 64 * 7 : 64 * 8] = 0.0  # one whole block of maxima
    assert blockwise._blocks(x, 10) is not None  # these sizes take the blockwise path
    tokens, best = blockwise.pick_argmax(x)
    want_best, want_tokens = x.max(dim=1)
    assert torch.equal(tokens, want_tokens) and torch.equal(best, want_best)
    for k in (1, 10):
        values, index = blockwise.top_k(x, k)
        want_values, _ = x.topk(k, dim=1)
        assert torch.equal(values, want_values)
        assert torch.equal(x.gather(1, index), values)  # positions of those values
        assert index.unique(dim=1).size(1) == k or bool((values == float("-inf")).any())
    assert blockwise._blocks(x[:, :-1].contiguous(), 1) is None  # not whole blocks: plain torch


def test_beam_and_greedy_outputs_do_not_depend_on_blockwise_search(monkeypatch) -> None:
    from mt.decode import blockwise
    from mt.model import transformer

    torch.manual_seed(0)
    vocab = 64 * 64  # 5 beams x 4096 pieces: the top-10 runs blockwise
    model = transformer(src_vocab_size=vocab, tgt_vocab_size=vocab, **vars(model_preset("tiny")))
    model.eval()
    src, mask = batch([9, 6, 4])
    src = torch.randint(4, vocab, src.shape).masked_fill(mask, PAD)
    limits = Limits(BOS, EOS, max_len_a=1.0, max_len_b=4)
    fast = (
        beam_search(model, src, mask, limits, beam=5, nbest=5),
        greedy_search(model, src, mask, limits),
    )
    monkeypatch.setattr(blockwise, "_blocks", lambda x, k: None)
    plain = (
        beam_search(model, src, mask, limits, beam=5, nbest=5),
        greedy_search(model, src, mask, limits),
    )
    assert fast == plain
