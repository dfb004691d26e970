"""SelfAttention / CrossAttention against a naive softmax(QK^T/sqrt(Dh))V reference."""

import math

import torch

from mt.model.attention import CrossAttention, SelfAttention
from mt.model.cache import KVCache
from mt.model.packing import Packing

D, H = 16, 4


def _naive(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    """q [B,H,T,Dh], k/v [B,H,S,Dh], allowed bool broadcastable to [B,H,T,S] -> [B,T,H*Dh]."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    b, h, t, dh = q.shape
    return (probs @ v).transpose(1, 2).reshape(b, t, h * dh)


def _heads(x: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> [B, H, T, Dh]."""
    b, t, _ = x.shape
    return x.view(b, t, H, D // H).transpose(1, 2)


def _dense(b: int, t: int) -> Packing:
    return Packing.dense(b, t, torch.device("cpu"))


def test_self_attention_matches_naive_with_padding_mask() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(D, H).eval()
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)[:, None, None, :]
    q, k, v = (_heads(t) for t in attn.qkv(x).chunk(3, dim=-1))
    expected = attn.out(_naive(q, k, v, mask)).flatten(0, 1)
    out = attn(x.flatten(0, 1), _dense(2, 5), mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_self_attention_causal_matches_naive() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(D, H).eval()
    x = torch.randn(2, 6, D)
    q, k, v = (_heads(t) for t in attn.qkv(x).chunk(3, dim=-1))
    lower = torch.ones(6, 6, dtype=torch.bool).tril()
    expected = attn.out(_naive(q, k, v, lower)).flatten(0, 1)
    out = attn(x.flatten(0, 1), _dense(2, 6), causal=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_packed_input_equals_padded_input_at_real_tokens() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(D, H).eval()
    pad_mask = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    mask = ~pad_mask[:, None, None, :]
    x = torch.randn(2, 5, D)
    full = attn(x.flatten(0, 1), _dense(2, 5), mask).view(2, 5, D)
    packing = Packing.from_pad_mask(pad_mask)
    packed = attn(packing.pack(x), packing, mask)
    torch.testing.assert_close(packed, full[~pad_mask], atol=1e-6, rtol=1e-6)


def test_cached_self_attention_equals_causal_full_pass() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(D, H).eval()
    x = torch.randn(3, 5, D)
    full = attn(x.flatten(0, 1), _dense(3, 5), causal=True).view(3, 5, D)
    cache = KVCache.empty(3, H, 8, D // H, dtype=torch.float32, device=torch.device("cpu"))
    steps = [attn(x[:, t], _dense(3, 1), cache=cache) for t in range(5)]
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cross_attention_ignores_masked_memory_and_matches_naive() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(D, H).eval()
    x, memory = torch.randn(2, 3, D), torch.randn(2, 6, D)
    allowed = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    mask = allowed[:, None, None, :]

    def run(mem: torch.Tensor) -> torch.Tensor:
        k, v = attn.project_kv(mem.flatten(0, 1), _dense(2, 6))
        return attn(x.flatten(0, 1), _dense(2, 3), k, v, mask)

    out = run(memory)
    garbage = memory.clone()
    garbage[0, 4:] = 100.0 * torch.randn(2, D)  # only at the masked positions
    torch.testing.assert_close(run(garbage), out, atol=1e-6, rtol=0)
    q = _heads(attn.q(x))
    k, v = (_heads(t) for t in attn.kv(memory).chunk(2, dim=-1))
    expected = attn.out(_naive(q, k, v, mask)).flatten(0, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_fused_projection_init_is_per_block_xavier() -> None:
    attn = SelfAttention(256, 4)
    bound = math.sqrt(6.0 / (256 + 256))  # xavier bound of one [D, D] block, not of [3D, D]
    assert attn.qkv.weight.abs().max() <= bound
    assert attn.qkv.weight.abs().max() > 0.9 * bound
    assert torch.all(attn.qkv.bias == 0)
