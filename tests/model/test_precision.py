"""bf16 autocast emulation: same numbers as a bf16 GEMM, active only where it should be."""

import pytest
import torch
import torch.nn.functional as F

from mt.model import precision


@pytest.fixture
def emulate(monkeypatch):
    """Take the emulation path whatever this CPU has (on AVX2-only CPUs it is the real one)."""
    monkeypatch.setattr(precision, "_cpu_has_bf16_gemm", lambda: False)


needs_emulation = pytest.mark.usefixtures("emulate")


def test_plain_fp32_outside_autocast() -> None:
    x, w, b = torch.randn(4, 8), torch.randn(3, 8), torch.randn(3)
    assert not precision.emulating_bf16(x)
    torch.testing.assert_close(precision.linear(x, w, b), F.linear(x, w, b), rtol=0, atol=0)


@needs_emulation
def test_emulated_linear_matches_native_bf16_linear() -> None:
    torch.manual_seed(0)
    x, w, b = torch.randn(16, 64), torch.randn(32, 64), torch.randn(32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert precision.emulating_bf16(x)
        emulated = precision.linear(x, w, b)
        native = F.linear(x, w, b)
    assert emulated.dtype == native.dtype == torch.bfloat16
    # same rounded operands, fp32 accumulation: at most one bf16 rounding step apart
    torch.testing.assert_close(emulated.float(), native.float(), atol=0.05, rtol=2**-7)


@needs_emulation
def test_emulated_linear_gradients_are_bf16_rounded() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(4, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        precision.linear(x, w).float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad, x.grad.bfloat16().float(), rtol=0, atol=0)
    expected = w.bfloat16().float().sum(0).expand(8, 16)
    torch.testing.assert_close(x.grad, expected, atol=0.05, rtol=2**-7)


@needs_emulation
def test_emulated_attention_matches_fp32_within_bf16_precision() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 12, 8) for _ in range(3))  # 12 queries: not a decoder step
    mask = torch.ones(2, 1, 1, 12, dtype=torch.bool)
    mask[0, ..., 3:] = False
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = precision.attention(q, k, v, mask, 0.0, False)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.03, rtol=0.02)


def test_cpu_bf16_training_attention_takes_the_math_kernel_with_the_same_numbers() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 7, 8, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    assert precision._slow_cpu_flash_backward(q)
    assert not precision._slow_cpu_flash_backward(q.detach())  # decoding keeps flash
    assert not precision._slow_cpu_flash_backward(q.detach().float().requires_grad_())
    out = precision.attention(q, k, v, None, 0.0, True)
    out.float().sum().backward()
    q2, k2, v2 = (t.detach().float().requires_grad_() for t in (q, k, v))
    reference = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True)
    reference.sum().backward()
    torch.testing.assert_close(out.float(), reference, atol=0.03, rtol=0.02)
    torch.testing.assert_close(q.grad.float(), q2.grad, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("autocasting", [False, True])
def test_decoder_step_attention_by_matmul_matches_sdpa(monkeypatch, autocasting) -> None:
    """A decoder step on CPU: two fp32 matmuls instead of SDPA, same numbers."""
    torch.manual_seed(0)
    q = torch.randn(6, 4, 1, 16)
    k, v = torch.randn(6, 4, 9, 16), torch.randn(6, 4, 9, 16)
    mask = torch.ones(6, 1, 1, 9, dtype=torch.bool)
    mask[2, ..., 4:] = False
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def no_sdpa(*args, **kwargs):
        raise AssertionError("a decoder step must not call SDPA")

    monkeypatch.setattr(F, "scaled_dot_product_attention", no_sdpa)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocasting):
        out = precision.attention(q, k, v, mask, 0.0, False, incremental=True)
    assert out.dtype == (torch.bfloat16 if autocasting else torch.float32)
    tol = dict(atol=0.01, rtol=0.01) if autocasting else dict(atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.float(), reference, **tol)
