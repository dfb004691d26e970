"""CUDA paths: bf16 and fp16 training, GPU decoding, the flash-attention kernel.

Marked `gpu`; they skip without CUDA (CI has none) and run as they are on a GPU box.
"""

import pytest
import torch

from mt.checkpoint import load_checkpoint
from mt.config import DecodeConfig
from mt.decode.run import load_run
from mt.decode.torch_engine import TorchTranslator
from mt.train import run_train
from tests.conftest import train_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_on_cuda_in_mixed_precision(prepared_dir, tmp_path, precision):
    run = tmp_path / "r"
    overrides = ("train.device=cuda", f"train.precision={precision}", "train.max_steps=20")
    results = run_train(train_config(prepared_dir, run, *overrides, "train.valid_every=10"))
    assert results["step"] == 20
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    losses = [h["valid/loss"] for h in results["history"]]
    assert losses[-1] < losses[0]
    if precision == "fp16":
        assert ckpt["scaler"]["scale"] > 0  # the GradScaler was active and saved


def test_gpu_decoding_matches_cpu(overfit_run):
    corpus, run, _ = overfit_run
    lines = (corpus / "train.en").read_text(encoding="utf-8").splitlines()[:8]
    outputs = {}
    for name in ("cpu", "cuda"):
        device = torch.device(name)
        translator = TorchTranslator(
            load_run(run, None, device), DecodeConfig(beam=4), device, "fp32"
        )
        outputs[name] = [hyps[0][0] for hyps in translator.translate(lines)]
    assert outputs["cuda"] == outputs["cpu"]


def test_flash_attention_kernel_serves_the_models_attention():
    """Unpadded causal self-attention (the decoder in training) runs on the flash kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mt.model.kernels import attention

    q, k, v = torch.randn(3, 2, 4, 37, 64, device="cuda", dtype=torch.bfloat16).unbind(0)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if flash cannot serve this call
        flash = attention(q, k, v, None, 0.0, causal=True)
    with sdpa_kernel(SDPBackend.MATH):
        reference = attention(q, k, v, None, 0.0, causal=True)
    torch.testing.assert_close(flash.float(), reference.float(), atol=2e-2, rtol=2e-2)
