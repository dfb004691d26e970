"""KVCache append/fill/reorder/reset and DecoderState.reorder, tested without a model."""

import pytest
import torch

from mt.model.cache import DecoderState, KVCache


def _empty(n: int = 3, max_len: int = 5) -> KVCache:
    return KVCache.empty(n, 2, max_len, 4, dtype=torch.float32, device=torch.device("cpu"))


def test_append_returns_all_valid_positions_in_order() -> None:
    cache = _empty()
    steps = [torch.randn(3, 2, 1, 4) for _ in range(3)]
    for i, k in enumerate(steps):
        keys, values = cache.append(k, -k)
        assert keys.shape == (3, 2, i + 1, 4)
    torch.testing.assert_close(keys, torch.cat(steps, dim=2), rtol=0, atol=0)
    torch.testing.assert_close(values, -torch.cat(steps, dim=2), rtol=0, atol=0)
    assert cache.size == 3


def test_append_multiple_positions_at_once() -> None:
    cache = _empty()
    first, second = torch.randn(3, 2, 2, 4), torch.randn(3, 2, 1, 4)
    cache.append(first, first)
    keys, _ = cache.append(second, second)
    torch.testing.assert_close(keys, torch.cat([first, second], dim=2), rtol=0, atol=0)


def test_append_overflow_raises() -> None:
    cache = _empty(max_len=2)
    cache.append(torch.randn(3, 2, 2, 4), torch.randn(3, 2, 2, 4))
    with pytest.raises(ValueError, match="capacity 2"):
        cache.append(torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4))


def test_filled_cache_is_fully_valid() -> None:
    k, v = torch.randn(3, 2, 6, 4), torch.randn(3, 2, 6, 4)
    cache = KVCache.filled(k, v)
    assert cache.size == 6
    torch.testing.assert_close(cache.keys, k, rtol=0, atol=0)
    torch.testing.assert_close(cache.values, v, rtol=0, atol=0)


def test_reorder_permutes_and_drops_rows_keeping_capacity() -> None:
    cache = _empty(n=4, max_len=5)
    k = torch.randn(4, 2, 2, 4)
    cache.append(k, k + 1)
    index = torch.tensor([3, 0, 0])  # drop rows 1 and 2, duplicate row 0 (beam reordering)
    cache.reorder(index)
    assert cache.capacity == 5
    torch.testing.assert_close(cache.keys, k[index], rtol=0, atol=0)
    torch.testing.assert_close(cache.values, k[index] + 1, rtol=0, atol=0)
    new = torch.randn(3, 2, 1, 4)  # appending after a reorder continues at the same position
    keys, _ = cache.append(new, new)
    torch.testing.assert_close(keys, torch.cat([k[index], new], dim=2), rtol=0, atol=0)


def test_many_reorders_and_appends_match_a_reference() -> None:
    """Beam search alternates append and reorder (the cache swaps two buffers): the valid
    positions always equal a plain tensor gathered the same way."""
    torch.manual_seed(0)
    cache, reference = _empty(n=6, max_len=8), torch.empty(6, 2, 0, 4)
    for rows in (6, 6, 5, 5, 3, 3, 2):
        new = torch.randn(reference.shape[0], 2, 1, 4)
        cache.append(new, 2 * new)
        reference = torch.cat([reference, new], dim=2)
        index = torch.randint(0, reference.shape[0], (rows,))
        cache.reorder(index)
        reference = reference[index]
        torch.testing.assert_close(cache.keys, reference, rtol=0, atol=0)
        torch.testing.assert_close(cache.values, 2 * reference, rtol=0, atol=0)


def test_reset_empties_the_cache() -> None:
    cache = _empty()
    cache.append(torch.randn(3, 2, 2, 4), torch.randn(3, 2, 2, 4))
    cache.reset()
    assert cache.size == 0 and cache.keys.shape == (3, 2, 0, 4)


def test_decoder_state_reorders_every_cache_and_the_mask() -> None:
    selfs = [_empty(n=3) for _ in range(2)]
    k = torch.randn(3, 2, 1, 4)
    for cache in selfs:
        cache.append(k, k)
    crosses = [KVCache.filled(torch.randn(3, 2, 6, 4), torch.randn(3, 2, 6, 4)) for _ in range(2)]
    cross_keys = [c.keys.clone() for c in crosses]
    mask = torch.rand(3, 1, 1, 6) > 0.5
    state = DecoderState(selfs, crosses, mask)
    state.step = 1
    index = torch.tensor([2, 1])
    state.reorder(index)
    assert state.n_rows == 2 and state.step == 1
    torch.testing.assert_close(state.memory_mask, mask[index], rtol=0, atol=0)
    for cache in state.self_caches:
        torch.testing.assert_close(cache.keys, k[index], rtol=0, atol=0)
    for cache, before in zip(state.cross_caches, cross_keys, strict=True):
        torch.testing.assert_close(cache.keys, before[index], rtol=0, atol=0)


def test_reorder_can_grow_the_number_of_rows() -> None:
    cache = _empty(n=2, max_len=4)
    k = torch.randn(2, 2, 1, 4)
    cache.append(k, k)
    index = torch.tensor([0, 0, 1, 1])  # e.g. expanding sentences to beams
    cache.reorder(index)
    keys, _ = cache.append(torch.zeros(4, 2, 1, 4), torch.zeros(4, 2, 1, 4))
    torch.testing.assert_close(keys[:, :, :1], k[index], rtol=0, atol=0)
    assert cache.capacity == 4
