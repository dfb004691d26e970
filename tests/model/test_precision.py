"""CPU attention kernels give SDPA's numbers; bf16 is refused on CPUs without bf16 matmuls."""

import pytest
import torch
import torch.nn.functional as F

from mt import runtime
from mt.decode import layout
from mt.model import kernels, projection


def test_attention_outside_autocast_is_plain_sdpa() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 12, 8) for _ in range(3))
    mask = torch.ones(2, 1, 1, 12, dtype=torch.bool)
    mask[0, ..., 3:] = False
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = kernels.attention(q, k, v, mask, 0.0, False)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)


def test_decoder_step_caches_are_fp32_on_cpu() -> None:
    assert kernels.step_cache_dtype(torch.zeros(1, dtype=torch.bfloat16)) == torch.float32


def test_cpu_bf16_training_attention_takes_the_math_kernel_with_the_same_numbers() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 7, 8, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    assert kernels._slow_cpu_flash_backward(q)
    assert not kernels._slow_cpu_flash_backward(q.detach())  # decoding keeps flash
    assert not kernels._slow_cpu_flash_backward(q.detach().float().requires_grad_())
    out = kernels.attention(q, k, v, None, 0.0, True)
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
        out = kernels.attention(q, k, v, mask, 0.0, False, incremental=True)
    assert out.dtype == (torch.bfloat16 if autocasting else torch.float32)
    tol = dict(atol=0.01, rtol=0.01) if autocasting else dict(atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.float(), reference, **tol)


def test_bf16_on_a_cpu_without_bf16_matmuls_is_refused(monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: False)
    with pytest.raises(ValueError, match="precision=bf16 needs a CPU with native bf16 matmuls"):
        runtime.pick_precision("bf16", cpu)
    assert runtime.pick_precision("auto", cpu) == "fp32"
    assert runtime.pick_precision("fp32", cpu) == "fp32"


def test_bf16_on_a_cpu_with_bf16_matmuls_is_kept(monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: True)
    assert runtime.pick_precision("bf16", cpu) == runtime.pick_precision("auto", cpu) == "bf16"


def test_int8_rows_project_within_a_rows_own_scale() -> None:
    torch.manual_seed(0)
    weight = torch.randn(50, 16) * torch.logspace(-2, 0, 50)[:, None]  # rows of unequal size
    hidden = torch.randn(6, 16)
    rows = projection.Int8Rows(weight)
    out, reference = rows(hidden), hidden @ weight.T
    assert out.dtype == torch.float32 and out.shape == (6, 50)
    assert not torch.equal(out, reference)  # it is quantized
    # each logit is off by at most its row's quantization step plus the activations' one
    bound = (weight.abs().amax(1) / 127 * hidden.abs().sum(1, keepdim=True)) + (
        hidden.abs().amax() / 63 * weight.abs().sum(1)
    )
    assert bool(((out - reference).abs() <= bound).all())
    ids = torch.tensor([3, 49, 0, 17])
    torch.testing.assert_close(rows.rows(ids)(hidden), out[:, ids])


def test_int8_quantizes_the_tied_output_projection_of_a_copy() -> None:
    from mt.config import model_preset
    from mt.model import transformer

    torch.manual_seed(0)
    model = transformer(src_vocab_size=30, tgt_vocab_size=30, **vars(model_preset("tiny"))).eval()
    int8 = layout.quantize_int8(model)
    assert model.output_rows is None and int8.output_rows is not None
    hidden = torch.randn(5, model.decoder.embed.tokens.embedding_dim)
    with torch.no_grad():
        full, quantized = model.project(hidden), int8.project(hidden)
    assert not torch.equal(full, quantized)
    torch.testing.assert_close(quantized, full, atol=0.05 * full.abs().max().item(), rtol=0)
    assert bool((quantized.argmax(1) == full.argmax(1)).float().mean() >= 0.8)


def test_fp32_cpu_decoding_reorders_the_output_projection_of_a_copy_sharing_weights() -> None:
    from mt.config import model_preset
    from mt.decode.beam import beam_search
    from mt.decode.greedy import greedy_search
    from mt.decode.search import Limits
    from mt.model import transformer

    torch.manual_seed(0)
    model = transformer(src_vocab_size=40, tgt_vocab_size=40, **vars(model_preset("tiny"))).eval()
    packed = layout.for_decoding(model, "fp32", torch.device("cpu"))
    assert model.output_rows is None
    assert isinstance(packed.output_rows, projection.OneDNNRows)
    weights = dict(packed.named_parameters())
    assert all(p is weights[name] for name, p in model.named_parameters())  # no copy
    assert layout.for_decoding(packed, "fp32", torch.device("cpu")).output_rows is not None
    hidden = torch.randn(7, model.decoder.embed.tokens.embedding_dim)
    with torch.no_grad():
        torch.testing.assert_close(packed.project(hidden), model.project(hidden))
        ids = torch.tensor([5, 39, 0, 17])
        rows = packed.output_rows.rows(ids)
        torch.testing.assert_close(rows(hidden), model.project(hidden)[:, ids])
    src = torch.randint(4, 40, (6, 9))
    limits = Limits(2, 3, max_len_a=1.0, max_len_b=3)  # bos 2, eos 3 (pad 0)
    for search in (greedy_search, lambda *a: [h[0] for h in beam_search(*a, beam=3)]):
        ours, plain = (search(m, src, src == 0, limits) for m in (packed, model))
        assert [h.tokens for h in ours] == [h.tokens for h in plain]
        # scores are float sums of fp32 log-probs: oneDNN and MKL round differently by CPU
        torch.testing.assert_close(
            [h.score for h in ours], [h.score for h in plain], rtol=1e-5, atol=1e-5
        )
