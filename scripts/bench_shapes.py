"""Training throughput of model shapes against `small`, interleaved in one process.

    python scripts/bench_shapes.py

Multi30k (MT_MULTI30K, default ../shared/data/multi30k) with a joint 8k SentencePiece, 60 batches
of at most 2,500 tokens (the recipe's), mt's real train step in fp32, rounds of 8 seconds per
shape, three rounds. Prints target tokens/s, the ratio to small, and the matmul GFLOP/s reached;
the dense matmul peak is measured before and after.
"""

import os
import sys
import tempfile
from pathlib import Path

import torch

from mt.config import DataConfig, ModelConfig, PrepareConfig, SpmConfig, model_preset
from mt.data import ParallelData, epoch_batches
from mt.prepare import run_prepare

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import Ours, matmul_flops_per_token, measure_peak, run_for  # noqa: E402

SHAPES = {
    "small": {},
    "small, d_ff 512": {"d_ff": 512},
    "d_model 192, d_ff 768": {"d_model": 192, "d_ff": 768},
    "mini": None,
    "mini, d_ff 512": {"d_ff": 512},
}
VOCAB = 8000


def shape(name: str, overrides: dict | None) -> ModelConfig:
    base = "mini" if name.startswith("mini") else "small"
    return model_preset(base, positions="rope", dropout=0.1, **(overrides or {}))


def main() -> None:
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.environ.get("MT_MULTI30K", "../shared/data/multi30k")
        data = DataConfig(name="multi30k", path=corpus, format="text", valid="val", test=None)
        out = Path(tmp) / "data"
        run_prepare(PrepareConfig(data=data, spm=SpmConfig(vocab_size=VOCAB), out_dir=str(out)))
        train = ParallelData(out, "train", 1024)
        batches = [train.collate(ids) for ids in epoch_batches(train, 2500, 1, 0)[:60]]
    print(f"matmul peak before: {measure_peak(torch.float32, device) / 1e9:.0f} GFLOP/s")
    configs = {name: shape(name, overrides) for name, overrides in SHAPES.items()}
    systems = {name: Ours(cfg, VOCAB, "fp32", device) for name, cfg in configs.items()}
    for system in systems.values():  # warm-up
        run_for(system, batches, 0.0, 0, device)
        run_for(system, batches, 0.0, 1, device)
    totals = {name: [0.0, 0.0] for name in systems}
    cursors = dict.fromkeys(systems, 0)
    for _ in range(3):
        for name, system in systems.items():
            tokens, elapsed, cursors[name] = run_for(system, batches, 8.0, cursors[name], device)
            totals[name][0] += tokens
            totals[name][1] += elapsed
    src = sum(int((~b.src_pad_mask).sum()) for b in batches)
    tgt = sum(b.n_tgt_tokens for b in batches)
    speed = {name: tokens / elapsed for name, (tokens, elapsed) in totals.items()}
    for name, tok_s in speed.items():
        flops = matmul_flops_per_token(configs[name], VOCAB, src, tgt)
        print(
            f"{name:<22} {tok_s:7.0f} tgt tok/s  {tok_s / speed['small']:.2f}x small  "
            f"{tok_s * flops / 1e9:4.0f} GFLOP/s"
        )
    print(f"matmul peak after: {measure_peak(torch.float32, device) / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
