"""Training throughput of mt against a Hugging Face MarianMTModel of the same size, same batches.

    python scripts/bench_train.py [--presets small,base] [--precisions fp32,bf16] [--seconds 25]
    python scripts/bench_train.py --device cuda --presets base,big --precisions bf16,fp16
    python scripts/bench_train.py --presets mini,small --compile   # eager against compiled
    python scripts/bench_train.py --smoke          # seconds: `tiny`, fp32, a synthetic corpus

Batches come from Multi30k (MT_MULTI30K, default ../shared/data/multi30k, joint 8k
SentencePiece, at most 4,096 padded tokens per batch); without it, from a synthetic corpus.
Both systems train on the same batches with label-smoothed cross-entropy, AdamW and gradient
clipping, in alternating rounds so machine drift hits both alike. Prints target tokens/s, the
ratio ours / Hugging Face, and the share of the measured matmul peak each achieves (with
--compile, also mt under train.compile and its ratio to eager mt); the last line is one JSON
object with every figure. --smoke checks that it runs: the `tiny` preset in
fp32 for a second per system, 4 batches of a 2,000-pair synthetic corpus (1,000 pieces).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

# run as `python scripts/bench_train.py`: its folder is on sys.path
from benchlib import alternate, multi30k_dir, plain_update, print_json, synchronize

from mt.config import (
    DataConfig,
    ModelConfig,
    PrepareConfig,
    SpmConfig,
    TrainLoopConfig,
    model_preset,
)
from mt.data import Batch, ParallelData, epoch_batches
from mt.loss import Seq2SeqLoss
from mt.model import transformer
from mt.optim import build_optimizer, build_scheduler
from mt.prepare import run_prepare
from mt.runtime import autocast, bf16_supported, grad_scaler
from mt.tokenizer import PAD_ID
from mt.tracking import Tracker
from mt.training.setup import compile_counts, compiled
from mt.training.trainer import Trainer


def load_batches(
    folder: Path,
    n: int,
    pairs: int = 30_000,
    vocab: int = 8000,
    synthetic: bool = False,
    max_tokens: int = 4096,
    corpus: Path | None = None,
) -> tuple[list[Batch], int]:
    """Prepare Multi30k (or, without it or with `synthetic`, a synthetic corpus of `pairs`; or
    the Multi30k-shaped folder `corpus`) with a `vocab`-piece SentencePiece and take `n`
    training batches of <= `max_tokens` tokens."""
    if corpus is None and not synthetic:
        corpus = multi30k_dir()
    if corpus is not None and corpus.is_dir():
        data = DataConfig(name="multi30k", path=str(corpus), format="text", valid="val", test=None)
    else:
        from bench_prepare import synthetic_corpus

        data = DataConfig(name="syn", path=str(synthetic_corpus(folder / "syn", pairs)), test=None)
    manifest = run_prepare(
        PrepareConfig(data=data, spm=SpmConfig(vocab_size=vocab), out_dir=str(folder / "data"))
    )
    train = ParallelData(folder / "data", "train", 1024)
    ids = epoch_batches(train, max_tokens, seed=1, epoch=0)[:n]
    return [train.collate(b) for b in ids], manifest.spm.vocab_size


def matmul_flops_per_token(cfg: ModelConfig, vocab: int, src_tokens: int, tgt_tokens: int) -> float:
    """Forward+backward FLOPs of one step per target token (matmuls and attention, 3x forward)."""
    d, f = cfg.d_model, cfg.d_ff
    enc = cfg.n_layers_enc * (4 * d * d + 2 * d * f)
    dec = cfg.n_layers_dec * (8 * d * d + 2 * d * f)
    forward = 2 * (enc * src_tokens + (dec + d * vocab) * tgt_tokens)
    return 3 * forward / tgt_tokens


def measure_peak(dtype: torch.dtype, device: torch.device, seconds: float = 3.0) -> float:
    """Measured dense matmul FLOP/s of the device in `dtype` (the "peak" shares refer to)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, b)
    synchronize(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
        if device.type == "cuda" and count % 10 == 0:
            synchronize(device)
    synchronize(device)
    return 2 * n**3 * count / (time.perf_counter() - start)


class Ours:
    """mt's real Trainer.train_step; with `compile`, under train.compile's torch.compile."""

    def __init__(
        self,
        cfg: ModelConfig,
        vocab: int,
        precision: str,
        device: torch.device,
        compile: bool = False,
    ) -> None:
        torch.manual_seed(0)
        model = transformer(**vars(cfg), src_vocab_size=vocab, tgt_vocab_size=vocab, pad_id=PAD_ID)
        model.to(device)
        loss_fn = Seq2SeqLoss(model, 0.1, PAD_ID)
        if compile:
            loss_fn = compiled(loss_fn)
        opt = build_optimizer(model, 5e-4, (0.9, 0.98), 1e-8, 0.0, device)
        self.trainer = Trainer(
            model=model,
            loss_fn=loss_fn,
            optimizer=opt,
            scheduler=build_scheduler(opt, 4000),
            scaler=grad_scaler(precision, device),
            train_data=None,
            valid_data=None,
            tokenizer=None,
            tracker=Tracker(None),
            run=None,
            cfg=TrainLoopConfig(),
            device=device,
            precision=precision,
        )

    def step(self, batch: Batch) -> None:
        self.trainer.train_step([batch])


class HuggingFace:
    """MarianMTModel of the same size: logits -> label-smoothed CE, torch AdamW, clipping; in
    fp16 with a GradScaler, as mt's Trainer (the scaler is a pass-through otherwise)."""

    def __init__(self, cfg: ModelConfig, vocab: int, precision: str, device: torch.device) -> None:
        from transformers import MarianConfig, MarianMTModel

        torch.manual_seed(0)
        config = MarianConfig(
            vocab_size=vocab, d_model=cfg.d_model, encoder_layers=cfg.n_layers_enc,
            decoder_layers=cfg.n_layers_dec, encoder_attention_heads=cfg.n_heads,
            decoder_attention_heads=cfg.n_heads, encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff,
            dropout=cfg.dropout, activation_function=cfg.activation, max_position_embeddings=1024,
            scale_embedding=True, share_encoder_decoder_embeddings=True, pad_token_id=PAD_ID,
            decoder_start_token_id=2, eos_token_id=3,
        )  # fmt: skip
        self.model = MarianMTModel(config).to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=5e-4, betas=(0.9, 0.98))
        self.scaler = grad_scaler(precision, device)
        self.precision, self.device = precision, device

    def step(self, batch: Batch) -> None:
        batch = batch.to(self.device)
        with autocast(self.precision, self.device):
            logits = self.model(
                input_ids=batch.src,
                attention_mask=~batch.src_pad_mask,
                decoder_input_ids=batch.tgt_in,
            ).logits
        plain_update(
            self.model, self.opt, self.scaler, logits, batch.tgt_out, PAD_ID, batch.n_tgt_tokens
        )


def compare(
    preset: str,
    precision: str,
    batches: list[Batch],
    vocab: int,
    seconds: float,
    rounds: int,
    device: torch.device,
    compile: bool = False,
) -> dict:
    cfg = model_preset(preset)
    systems = {
        "mt": Ours(cfg, vocab, precision, device),
        "hf": HuggingFace(cfg, vocab, precision, device),
    }
    if compile:
        systems["mt_compiled"] = Ours(cfg, vocab, precision, device, compile=True)
    return alternate(systems, batches, seconds, rounds, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="small,base")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--seconds", type=float, default=24.0, help="per system, small preset")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--compile", action="store_true", help="also time mt under train.compile (torch.compile)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args()
    peak_s = 3.0
    if args.smoke:
        args.presets, args.precisions, args.seconds, peak_s = "tiny", "fp32", 1.0, 0.2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"torch {torch.__version__}, {where}")
    precisions = args.precisions.split(",")
    bf16_native = bf16_supported(device)
    if "bf16" in precisions and not bf16_native:
        # without AVX512-BF16 / AMX, PyTorch refuses bf16 on CPU (mt.runtime.pick_precision)
        print("bf16: this CPU has no native bf16 matmul (no AVX512-BF16/AMX); bf16 skipped")
        precisions.remove("bf16")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    peaks = {p: measure_peak(dtypes[p], device, peak_s) for p in precisions}
    print("matmul peak: " + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()))
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            batches, vocab = load_batches(Path(tmp), 4, pairs=2000, vocab=1000, synthetic=True)
        else:
            batches, vocab = load_batches(Path(tmp), 40)
    src_tokens = sum(int((~b.src_pad_mask).sum()) for b in batches)
    tgt_tokens = sum(b.n_tgt_tokens for b in batches)
    results: dict = {
        "peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()},
        "bf16_native": bf16_native,
        "ratio_fp32": None,
        "ratio_bf16": None,
    }
    for preset in args.presets.split(","):
        flops = matmul_flops_per_token(model_preset(preset), vocab, src_tokens, tgt_tokens)
        seconds = args.seconds * (2.0 if preset != "small" else 1.0)
        for precision in precisions:
            speed = compare(preset, precision, batches, vocab, seconds, 3, device, args.compile)
            ratio = speed["mt"] / speed["hf"]
            share = {k: v * flops / peaks[precision] for k, v in speed.items()}
            print(
                f"{preset:<6} {precision}: mt {speed['mt']:7.0f} tgt tok/s "
                f"({share['mt']:.0%} of peak) | "
                f"HF Marian {speed['hf']:7.0f} ({share['hf']:.0%}) | ratio {ratio:.2f}x",
                flush=True,
            )
            results[f"{preset}_{precision}"] = {
                "mt_tok_s": round(speed["mt"]), "hf_tok_s": round(speed["hf"]),
                "ratio": round(ratio, 3),
                "mt_peak_share": round(share["mt"], 3), "hf_peak_share": round(share["hf"], 3),
            }  # fmt: skip
            if "mt_compiled" in speed:
                gain = speed["mt_compiled"] / speed["mt"]
                print(f"{preset:<6} {precision}: mt compiled {speed['mt_compiled']:7.0f} tgt tok/s "
                      f"({share['mt_compiled']:.0%} of peak) | compiled / eager {gain:.2f}x "
                      f"({compile_counts()['graphs']} graphs so far)", flush=True)  # fmt: skip
                results[f"{preset}_{precision}"]["mt_compiled_tok_s"] = round(speed["mt_compiled"])
                results[f"{preset}_{precision}"]["compiled_over_eager"] = round(gain, 3)
            if preset == "small":
                results[f"ratio_{precision}"] = round(ratio, 3)
    print_json(results)


if __name__ == "__main__":
    main()
