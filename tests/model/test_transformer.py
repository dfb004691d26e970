"""Seq2Seq properties: shapes, padding invariance, causality, cached decoding, reorder, training."""

from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from mt.config import model_preset
from mt.model import DecoderState, Seq2Seq, transformer

V, PAD, BOS = 50, 0, 2


def _tiny(**overrides: object) -> Seq2Seq:
    """The configs/model/tiny.yaml model over a joint vocabulary of V."""
    return transformer(
        src_vocab_size=V, tgt_vocab_size=V, **asdict(model_preset("tiny", **overrides))
    )


def _model(**overrides: object) -> Seq2Seq:
    torch.manual_seed(0)
    return _tiny(**overrides).eval()


def _src(lengths: list[int], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random right-padded source ids [B, S] and its pad mask (True at padding)."""
    width = width or max(lengths)
    pad_mask = torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None]
    src = torch.randint(4, V, (len(lengths), width)).masked_fill(pad_mask, PAD)
    return src, pad_mask


def _tgt(batch: int, length: int) -> torch.Tensor:
    tgt = torch.randint(4, V, (batch, length))
    tgt[:, 0] = BOS
    return tgt


def test_output_shapes() -> None:
    model = _model()
    src, pad_mask = _src([5, 3, 4])
    tgt = _tgt(3, 6)
    memory = model.encode(src, pad_mask)
    hidden = model.decode(tgt, memory, pad_mask)
    assert memory.shape == (3, 5, 32)
    assert hidden.shape == (3, 6, 32)
    assert model.project(hidden).shape == (3, 6, V)
    assert model(src, pad_mask, tgt).shape == (3, 6, V)


def test_forward_equals_encode_decode_project() -> None:
    model = _model()
    src, pad_mask = _src([5, 3, 4])
    tgt = _tgt(3, 6)
    tgt[1, 4:] = PAD
    via_parts = model.project(model.decode(tgt, model.encode(src, pad_mask), pad_mask))
    torch.testing.assert_close(model(src, pad_mask, tgt), via_parts, atol=1e-5, rtol=1e-5)


def test_source_pad_tokens_do_not_affect_real_positions() -> None:
    model = _model()
    src, pad_mask = _src([5, 2, 4])
    tgt = _tgt(3, 4)
    other = src.masked_fill(pad_mask, 7)  # real tokens at pad slots, mask unchanged
    torch.testing.assert_close(
        model.encode(other, pad_mask)[~pad_mask], model.encode(src, pad_mask)[~pad_mask]
    )
    torch.testing.assert_close(model(other, pad_mask, tgt), model(src, pad_mask, tgt))


def test_extra_source_padding_does_not_change_outputs() -> None:
    model = _model()
    src, pad_mask = _src([5, 2, 4])
    wide, wide_mask = F.pad(src, (0, 3), value=PAD), F.pad(pad_mask, (0, 3), value=True)
    tgt = _tgt(3, 4)
    memory, wide_memory = model.encode(src, pad_mask), model.encode(wide, wide_mask)
    torch.testing.assert_close(wide_memory[:, :5][~pad_mask], memory[~pad_mask])
    torch.testing.assert_close(model(wide, wide_mask, tgt), model(src, pad_mask, tgt))


def test_no_padding_batch_matches_padded_batch_rows() -> None:
    model = _model()
    src, pad_mask = _src([4, 2])
    tgt = _tgt(2, 3)
    alone = model(src[:1, :4], pad_mask[:1, :4], tgt[:1])  # first row has no padding at all
    torch.testing.assert_close(alone, model(src, pad_mask, tgt)[:1], atol=1e-5, rtol=1e-5)


def test_decoder_is_causal() -> None:
    model = _model()
    src, pad_mask = _src([5, 3])
    tgt = _tgt(2, 6)
    changed = tgt.clone()
    changed[:, 4] = (tgt[:, 4] + 1 - 4) % (V - 4) + 4  # a different real token at position 4
    out, out_changed = model(src, pad_mask, tgt), model(src, pad_mask, changed)
    torch.testing.assert_close(out_changed[:, :4], out[:, :4])
    assert not torch.allclose(out_changed[:, 4:], out[:, 4:])


def test_target_padding_gives_zero_logits_and_leaves_real_positions_alone() -> None:
    model = _model()
    src, pad_mask = _src([5, 3])
    tgt = _tgt(2, 6)
    padded = tgt.clone()
    padded[0, 3:] = PAD
    out, out_padded = model(src, pad_mask, tgt), model(src, pad_mask, padded)
    torch.testing.assert_close(out_padded[0, :3], out[0, :3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_padded[1], out[1], atol=1e-5, rtol=1e-5)
    assert torch.all(out_padded[0, 3:] == 0)


def _step_all(model: Seq2Seq, tgt: torch.Tensor, state: DecoderState) -> torch.Tensor:
    """Feed tgt [N, T] one column at a time -> logits [N, T, V]."""
    return torch.stack([model.decode_step(tgt[:, t], state) for t in range(tgt.shape[1])], 1)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"norm": "post"},
        {"positions": "learned"},
        {"norm": "post", "positions": "learned", "activation": "gelu"},
    ],
)
def test_cached_decode_step_equals_full_forward(overrides: dict) -> None:
    model = _model(**overrides)
    src, pad_mask = _src([6, 2, 4])
    tgt = _tgt(3, 7)
    with torch.no_grad():
        full = model(src, pad_mask, tgt)
        state = model.init_state(model.encode(src, pad_mask), pad_mask, max_len=10)
        stepped = _step_all(model, tgt, state)
    assert state.step == 7
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("index", [[2, 0], [1, 1, 0], [2, 1, 0]])
def test_reorder_then_step_equals_decoding_those_rows_alone(index: list[int]) -> None:
    model = _model()
    src, pad_mask = _src([6, 2, 4])
    tgt = _tgt(3, 5)
    keep = torch.tensor(index)
    with torch.no_grad():
        state = model.init_state(model.encode(src, pad_mask), pad_mask, max_len=8)
        _step_all(model, tgt[:, :2], state)
        state.reorder(keep)
        after = _step_all(model, tgt[keep, 2:], state)
        alone_state = model.init_state(model.encode(src[keep], pad_mask[keep]), pad_mask[keep], 8)
        alone = _step_all(model, tgt[keep], alone_state)
    assert state.n_rows == len(index)
    torch.testing.assert_close(after, alone[:, 2:], atol=1e-5, rtol=1e-5)


def test_dropout_only_in_training() -> None:
    model = _model(dropout=0.3)
    src, pad_mask = _src([5, 3])
    tgt = _tgt(2, 4)
    torch.testing.assert_close(model(src, pad_mask, tgt), model(src, pad_mask, tgt))
    model.train()
    assert not torch.allclose(model(src, pad_mask, tgt), model(src, pad_mask, tgt))


def test_bf16_autocast_forward_backward_close_to_fp32() -> None:
    model = _model(dropout=0.0)
    src, pad_mask = _src([5, 3])
    tgt = _tgt(2, 4)
    reference = model(src, pad_mask, tgt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, pad_mask, tgt)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.05)
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_tiny_model_overfits_a_small_batch() -> None:
    torch.manual_seed(0)
    model = _tiny(dropout=0.0)
    src, pad_mask = _src([8, 5, 7, 6, 8, 4, 3, 8])
    tgt = torch.randint(4, V, (8, 9))
    tgt[:, 0] = BOS
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(model(src, pad_mask, tgt_in).flatten(0, 1), tgt_out.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05  # from ln(50) ~ 3.9: it memorised the batch


@pytest.mark.parametrize("k", [2, 3])
def test_k_rows_per_source_equal_one_row_per_copy_of_the_memory(k: int) -> None:
    """DecoderState's beam layout: K rows sharing one source's memory decode exactly like K
    independent rows over repeated copies of it, through beam reorders that repeat slots and
    drop sources."""
    model = _model()
    src, pad_mask = _src([6, 2, 4])
    gen = torch.Generator().manual_seed(k)
    tokens = torch.randint(4, V, (3 * k, 6), generator=gen)  # [B*K, T] rows as the state has them
    tokens[:, 0] = BOS
    with torch.no_grad():
        memory = model.encode(src, pad_mask)
        shared = model.init_state(memory, pad_mask, max_len=8, rows_per_source=k)
        copies = model.init_state(
            memory.repeat_interleave(k, 0), pad_mask.repeat_interleave(k, 0), max_len=8
        )
        for t in range(tokens.shape[1]):
            a = model.decode_step(tokens[:, t], shared)
            b = model.decode_step(tokens[:, t], copies)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            sources = torch.tensor([0, 2] if t == 2 else list(range(shared.n_sources)))
            beams = torch.randint(0, k, (len(sources), k), generator=gen)
            shared.reorder(sources, beams)
            # the same rows named one by one: source b's slot j is row b*K + j
            copies.reorder((sources.unsqueeze(1) * k + beams).view(-1))
            if t == 2:
                tokens = tokens.view(3, k, -1)[[0, 2]].reshape(2 * k, -1)
    assert shared.n_rows == copies.n_rows == 2 * k and shared.n_sources == 2


def test_one_row_per_source_repeated_into_k_decodes_as_k_rows_from_the_start() -> None:
    """Beam search's first step: one row per source, then `reorder` with K slots of slot 0
    gives the state K rows per source, as if it had started with K."""
    model, k = _model(), 3
    src, pad_mask = _src([6, 2, 4])
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, V, (3 * k, 5), generator=gen)
    tokens[:, 0] = BOS
    with torch.no_grad():
        memory = model.encode(src, pad_mask)
        started = model.init_state(memory, pad_mask, max_len=8, rows_per_source=k)
        grown = model.init_state(memory, pad_mask, max_len=8, rows_per_source=1)
        first = model.decode_step(tokens[::k, 0], grown)  # [B, V]
        torch.testing.assert_close(
            first.repeat_interleave(k, 0), model.decode_step(tokens[:, 0], started)
        )
        grown.reorder(torch.arange(3), torch.zeros(3, k, dtype=torch.long))
        assert grown.rows_per_source == k and grown.n_rows == 3 * k
        for t in range(1, tokens.shape[1]):
            a, b = model.decode_step(tokens[:, t], grown), model.decode_step(tokens[:, t], started)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_reorder_that_moves_few_rows_rewrites_only_those_and_equals_a_gather() -> None:
    from mt.model.cache import KVCache, _moved_rows

    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(8, 2, 5, 3, generator=gen), torch.randn(8, 2, 5, 3, generator=gen)
    index = torch.tensor([0, 1, 1, 3, 2, 5, 6, 7])  # rows 2 and 4 move (and swap sources)
    moved = _moved_rows(index, 8)
    assert moved is not None and moved.tolist() == [2, 4]
    assert _moved_rows(torch.tensor([1, 0, 3, 2, 5, 4, 7, 6]), 8) is None  # all move: gather
    assert _moved_rows(index[:6], 8) is None  # rows leave: gather
    plain, partial = KVCache(k.clone(), v.clone(), size=3), KVCache(k.clone(), v.clone(), size=3)
    plain.reorder(index)
    partial.reorder(index, moved)
    assert torch.equal(partial.keys, plain.keys) and torch.equal(partial.values, plain.values)
    assert torch.equal(partial.keys, k[index, :, :3]) and torch.equal(
        partial.values, v[index, :, :3]
    )
    assert torch.equal(
        partial.k[:, :, 3:], k[:, :, 3:]
    )  # positions not yet filled stay as they are


@pytest.mark.parametrize(
    "overrides",
    [{}, {"norm": "post"}, {"positions": "rope"}, {"positions": "learned", "norm": "post"}],
)
def test_the_lean_decoder_step_equals_the_layers_forward(monkeypatch, overrides) -> None:
    """`DecoderLayer.step` (fp32 CPU search) against `forward` with a cache, through padding in
    the memory, a first step of one row per source and beam reorders that drop a source."""
    import importlib

    tr = importlib.import_module("mt.model.transformer")  # the module, not the builder

    model, k = _model(**overrides), 3
    src, pad_mask = _src([6, 2, 4])
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, V, (3 * k, 6), generator=gen)
    tokens[:, 0] = BOS
    logits = {}
    for lean in (True, False):
        monkeypatch.setattr(tr, "lean_step", lambda x, lean=lean: lean)
        gen = torch.Generator().manual_seed(2)  # the same reorders both times
        steps, toks = [], tokens
        with torch.no_grad():
            state = model.init_state(model.encode(src, pad_mask), pad_mask, max_len=8)
            steps.append(model.decode_step(toks[::k, 0], state))
            state.reorder(torch.arange(3), torch.zeros(3, k, dtype=torch.long))
            for t in range(1, toks.shape[1]):
                steps.append(model.decode_step(toks[:, t], state))
                sources = torch.tensor([0, 2] if t == 2 else list(range(state.n_sources)))
                state.reorder(sources, torch.randint(0, k, (len(sources), k), generator=gen))
                if t == 2:
                    toks = toks.view(3, k, -1)[[0, 2]].reshape(2 * k, -1)
        logits[lean] = steps
    for a, b in zip(logits[True], logits[False], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
