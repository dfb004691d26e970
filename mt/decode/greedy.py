"""Greedy search and sampling: one path per sentence, a token at a time until eos.

Both extend every sentence's single path through ``mt.decode.search.Stepper``; they differ only
in how a token is picked from the step's log-probs (``pick_argmax``, or a draw from the
tempered, top-k / top-p restricted distribution). Finished sentences leave the decoder state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from mt.decode.blockwise import pick_argmax
from mt.decode.search import (
    Hypothesis,
    IncrementalDecoder,
    Limits,
    forced_at,
    length_penalty,
    repeat_bans,
    start_search,
)
from mt.decode.shortlist_space import inputs_to_shortlist

_NEG_INF = float("-inf")


def _decode_paths(
    model: IncrementalDecoder,
    src: Tensor,
    src_pad_mask: Tensor,
    limits: Limits,
    pick: Callable[[Tensor], tuple[Tensor, Tensor]],
    prefix: Tensor | None = None,
    no_repeat_ngram: int = 0,
    vocab: Tensor | None = None,
) -> list[Hypothesis]:
    """Extend one path per sentence until eos; finished rows leave the state.

    ``pick`` maps log-probs [N, V] to the chosen tokens [N] and their log-probs [N]; where a
    target prefix forces a token, it is the only one left to pick. With a shortlist ``vocab``
    [C], V is C and the outputs are mapped back to ids.
    """
    b, device = src.size(0), src.device
    if b == 0:
        return []
    limits, prefix, _ = inputs_to_shortlist(vocab, limits, prefix, None)
    eos_id = limits.eos_id
    stepper, max_lens, n_steps = start_search(model, src, src_pad_mask, limits, 1, prefix, vocab)
    out = torch.full((b, n_steps), eos_id, dtype=torch.long, device=device)  # [B, T]
    lengths = torch.zeros(b, dtype=torch.long, device=device)  # [B], eos included
    logprobs = torch.zeros(b, device=device)  # [B]
    rows = torch.arange(b, device=device)  # [N] sentence of each live row
    tokens = torch.full((b,), limits.bos_id, dtype=torch.long, device=device)  # [N]
    first_cap = int(max_lens.min())
    for step in range(n_steps):
        at_max = max_lens[rows] <= step if step >= first_cap else None
        bans = repeat_bans(out[rows, :step], no_repeat_ngram)
        tokens, token_lprobs = pick(stepper(tokens, at_max, forced_at(prefix, rows, step), bans))
        out[rows, step] = tokens
        logprobs.index_add_(0, rows, token_lprobs)
        done = tokens == eos_id  # [N]
        if done.any():
            lengths[rows[done]] = step + 1
            keep = (~done).nonzero().squeeze(1)  # [N']
            if keep.numel() == 0:
                break
            stepper.state.reorder(keep)
            rows, tokens = rows[keep], tokens[keep]
    if vocab is not None:
        out = vocab[out]  # shortlist positions -> ids
    return [
        Hypothesis(seq[: n - 1], lp / length_penalty(n, 1.0), lp)
        for seq, n, lp in zip(out.tolist(), lengths.tolist(), logprobs.tolist(), strict=True)
    ]


@torch.no_grad()
def greedy_search(
    model: IncrementalDecoder,
    src: Tensor,
    src_pad_mask: Tensor,
    limits: Limits,
    prefix: Tensor | None = None,
    no_repeat_ngram: int = 0,
    vocab: Tensor | None = None,
) -> list[Hypothesis]:
    """Translate by taking the most probable token at every step.

    Args:
        model: Anything with ``encode``, ``init_state`` and ``decode_step`` (in eval mode).
        src: Source ids [B, S].
        src_pad_mask: Bool [B, S], True at padding.
        limits: bos/eos ids and length caps.
        prefix: Target prefix ids [B, P], -1 after each sentence's prefix: every output starts
            with its prefix, scored as the model scores it (the output tokens include it).
        no_repeat_ngram: N > 0 never emits an n-gram of N tokens twice in one output.
        vocab: Output shortlist, sorted distinct ids [C] holding bos, eos and every prefix
            token: the model scores only these (logits [N, C]), so outputs hold only these
            ids and log-probs are normalized over them. None scores the whole vocabulary.

    Returns:
        One hypothesis per sentence, in input order. Scores use lenpen 1.0, the
        ``beam_search`` default, so ``beam_search(beam=1)`` gives the same hypotheses.

    Raises:
        ValueError: If ``vocab`` is not sorted or lacks bos, eos or a prefix token.
    """
    return _decode_paths(
        model, src, src_pad_mask, limits, pick_argmax, prefix, no_repeat_ngram, vocab
    )


def _restrict(logits: Tensor, topk: int, topp: float) -> Tensor:
    """Set logits [N, V] outside the top-k tokens or the top-p nucleus to -inf."""
    if 0 < topk < logits.size(-1):
        kth = logits.topk(topk, dim=-1).values[:, -1:]  # [N, 1]
        logits = logits.masked_fill(logits < kth, _NEG_INF)
    if topp < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [N, V] each
        probs = sorted_logits.softmax(dim=-1)
        # drop a token once the more probable ones already cover topp (the best always stays)
        drop = probs.cumsum(dim=-1) - probs >= topp  # [N, V] in sorted order
        logits = logits.masked_fill(drop.scatter(1, order, drop), _NEG_INF)
    return logits


def _pick_sample(
    lprobs: Tensor, *, topk: int, topp: float, temperature: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Draw one token per row from the tempered, restricted distribution.

    Returns tokens [N] and their log-probs [N] under the model itself (no temperature or
    restriction), so hypotheses from all search functions are scored alike.
    """
    logits = _restrict(lprobs if temperature == 1.0 else lprobs / temperature, topk, topp)
    tokens = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)  # [N, 1]
    return tokens.squeeze(1), lprobs.gather(1, tokens).squeeze(1)


@torch.no_grad()
def sample(
    model: IncrementalDecoder,
    src: Tensor,
    src_pad_mask: Tensor,
    limits: Limits,
    *,
    topk: int = 0,
    topp: float = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    prefix: Tensor | None = None,
) -> list[Hypothesis]:
    """Translate by drawing every token from the model's (restricted) distribution.

    Args:
        model, src, src_pad_mask, limits: As in ``greedy_search``.
        topk: Draw only among the k most probable tokens; 0 keeps all.
        topp: Draw only from the smallest set of tokens whose probability reaches topp (nucleus).
        temperature: Divides the log-probs before restricting and drawing; below 1 is sharper.
        generator: Random source, for reproducible draws.
        prefix: As in ``greedy_search``.

    Returns:
        One hypothesis per sentence, in input order, scored by the untempered model log-probs
        with lenpen 1.0 (as ``greedy_search``).

    Raises:
        ValueError: If topk < 0, topp is outside (0, 1] or temperature <= 0.
    """
    if topk < 0 or not 0.0 < topp <= 1.0 or temperature <= 0.0:
        msg = f"got topk={topk}, topp={topp}, temperature={temperature}"
        raise ValueError(f"sample needs topk >= 0, 0 < topp <= 1 and temperature > 0, {msg}.")
    pick = functools.partial(
        _pick_sample, topk=topk, topp=topp, temperature=temperature, generator=generator
    )
    return _decode_paths(model, src, src_pad_mask, limits, pick, prefix)
