"""The fused, chunked projection + label-smoothed loss equals the textbook computation."""

import pytest
import torch
import torch.nn.functional as F

import mt.loss
from mt.loss import projected_label_smoothed_nll, select_targets


def reference(hidden, weight, target, epsilon):
    """Full logits, fp32 log-softmax, (1 - eps) * nll + eps * mean_v(-log p)."""
    lprobs = F.log_softmax((hidden @ weight.T).float(), dim=-1)
    nll = F.nll_loss(lprobs, target, reduction="sum")
    return (1 - epsilon) * nll - epsilon * lprobs.mean(dim=-1).sum(), nll


def loss_and_grads(fn, hidden, weight, target, epsilon, scale=0.37):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, nll = fn(h, w, target, epsilon)
    (loss * scale).backward()  # an upstream factor, like 1 / n_tokens or a loss scale
    return loss.detach(), nll.detach(), h.grad, w.grad


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [10**9, 7 * 29])  # one chunk, or 7-row chunks (ragged end)
def test_fused_loss_and_gradients_equal_the_reference_in_fp32(monkeypatch, epsilon, chunk):
    monkeypatch.setattr(mt.loss, "CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(mt.loss, "MIN_ROWS", 1)  # the cache rule alone
    torch.manual_seed(0)
    hidden, weight, target = torch.randn(45, 12), torch.randn(29, 12), torch.randint(0, 29, (45,))
    got = loss_and_grads(projected_label_smoothed_nll, hidden, weight, target, epsilon)
    want = loss_and_grads(reference, hidden, weight, target, epsilon)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_fused_loss_under_bf16_autocast_is_within_bf16_precision(monkeypatch):
    monkeypatch.setattr(mt.loss, "CHUNK_ELEMENTS", 5 * 64)
    monkeypatch.setattr(mt.loss, "MIN_ROWS", 1)  # the cache rule alone
    torch.manual_seed(0)
    hidden, weight, target = torch.randn(40, 32), torch.randn(64, 32), torch.randint(0, 64, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_and_grads(projected_label_smoothed_nll, hidden, weight, target, 0.1)
    want = loss_and_grads(reference, hidden, weight, target, 0.1)
    assert got[2].dtype == got[3].dtype == torch.float32  # parameter-dtype gradients
    torch.testing.assert_close(got[0], want[0], rtol=0.02, atol=0.5)
    for g, w in zip(got[2:], want[2:], strict=True):
        torch.testing.assert_close(g, w, rtol=0.05, atol=0.05)


def test_fused_loss_without_grad_computes_no_gradients(monkeypatch):
    """Validation runs under no_grad with parameters that require grad: no gradient GEMMs."""
    hidden = torch.randn(6, 4, requires_grad=True)
    weight = torch.randn(9, 4, requires_grad=True)
    target = torch.randint(0, 9, (6,))
    gradient_gemms = []
    monkeypatch.setattr(torch, "mm", lambda *a, **k: gradient_gemms.append(a))
    with torch.no_grad():
        loss, nll = projected_label_smoothed_nll(hidden, weight, target, 0.1)
    assert gradient_gemms == []
    monkeypatch.undo()
    torch.testing.assert_close(loss, reference(hidden, weight, target, 0.1)[0])
    assert not loss.requires_grad and not nll.requires_grad


def test_select_targets_drops_padding():
    hidden = torch.arange(12.0).view(2, 3, 2)
    tgt = torch.tensor([[5, 6, 0], [7, 0, 0]])
    kept, target = select_targets(hidden, tgt, pad_id=0)
    assert target.tolist() == [5, 6, 7]
    assert kept.tolist() == [[0.0, 1.0], [2.0, 3.0], [6.0, 7.0]]


def test_fp16_keeps_gradients_too_small_for_fp16():
    """Under fp16 autocast the gradients are worked out before any loss scale: they stay fp32."""
    hidden = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    weight = torch.tensor([[10.0, 0.0], [-12.0, 0.0], [0.0, 1.0]])  # token 1: p ~ 1e-10
    target = torch.tensor([0, 0])
    with torch.autocast("cpu", dtype=torch.float16):
        _, _, _, grad_w = loss_and_grads(projected_label_smoothed_nll, hidden, weight, target, 0.0)
    want = loss_and_grads(reference, hidden, weight, target, 0.0)[3]
    assert 0 < want[1, 0] < 6e-8  # below fp16's smallest subnormal
    torch.testing.assert_close(grad_w, want, rtol=1e-3, atol=0)


@pytest.mark.parametrize("chunk", [10**9, 7 * 29])
def test_an_output_bias_enters_the_logits_and_its_banned_ids_the_smoothing_not(monkeypatch, chunk):
    """An imported model's fixed bias: -inf ids are never emitted, so label smoothing spreads
    over the other ids only; loss and gradients are those of the textbook computation."""
    monkeypatch.setattr(mt.loss, "CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(mt.loss, "MIN_ROWS", 1)  # the cache rule alone
    torch.manual_seed(0)
    hidden, weight, target = torch.randn(45, 12), torch.randn(29, 12), torch.randint(3, 29, (45,))
    bias = torch.randn(29)
    bias[[0, 2]] = float("-inf")
    allowed = torch.isfinite(bias)

    def with_bias(h, w, t, eps):
        lprobs = F.log_softmax(h @ w.T + bias, dim=-1)
        nll = F.nll_loss(lprobs, t, reduction="sum")
        return (1 - eps) * nll - eps * lprobs[:, allowed].mean(dim=-1).sum(), nll

    fused = lambda h, w, t, eps: projected_label_smoothed_nll(h, w, t, eps, bias)  # noqa: E731
    got = loss_and_grads(fused, hidden, weight, target, 0.1)
    want = loss_and_grads(with_bias, hidden, weight, target, 0.1)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_chunks_keep_the_cache_rule_but_never_fall_below_min_rows():
    cpu, gpu = torch.device("cpu"), torch.device("meta")
    assert mt.loss.chunk_rows(8000, cpu) == max(mt.loss.MIN_ROWS, mt.loss.CHUNK_ELEMENTS // 8000)
    assert mt.loss.chunk_rows(58102, cpu) == mt.loss.MIN_ROWS  # the cache rule would give 36
    assert mt.loss.chunk_rows(64, cpu) == mt.loss.CHUNK_ELEMENTS // 64
    assert mt.loss.chunk_rows(58102, gpu) == mt.loss.GPU_CHUNK_ELEMENTS // 58102
