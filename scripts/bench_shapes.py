"""Training throughput of model shapes against `small`, interleaved in one process.

    python scripts/bench_shapes.py
    python scripts/bench_shapes.py --smoke         # seconds: small and mini, a synthetic corpus

Multi30k (MT_MULTI30K, default ../shared/data/multi30k) with a joint 8k SentencePiece, 60 batches
of at most 2,500 tokens (the recipe's), mt's real train step in fp32, rounds of 8 seconds per
shape, three rounds. Prints target tokens/s, the ratio to small, and the matmul GFLOP/s reached;
the dense matmul peak is measured before and after. The last line is JSON. --smoke checks that
it runs: small and mini only, 4 batches of at most 500 tokens of a 2,000-pair synthetic corpus
(1,000 pieces), one round of 0.3 seconds per shape.
"""

import argparse
import tempfile
from pathlib import Path

import torch

# run as `python scripts/bench_shapes.py`: its folder is on sys.path
from bench_prepare import synthetic_corpus
from bench_train import Ours, matmul_flops_per_token, measure_peak
from benchlib import alternate, multi30k_dir, print_json

from mt.config import DataConfig, ModelConfig, PrepareConfig, SpmConfig, model_preset
from mt.data import ParallelData, epoch_batches
from mt.prepare import run_prepare

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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args()
    device = torch.device("cpu")
    shapes, vocab, n_batches, tokens, round_s, rounds, peak_s = SHAPES, VOCAB, 60, 2500, 8.0, 3, 3.0
    if args.smoke:
        shapes = {"small": {}, "mini": None}
        vocab, n_batches, tokens, round_s, rounds, peak_s = 1000, 4, 500, 0.3, 1, 0.2
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            corpus = str(synthetic_corpus(Path(tmp) / "syn", 2000))
            data = DataConfig(name="syn", path=corpus, test=None)
        else:
            corpus = str(multi30k_dir())
            data = DataConfig(name="multi30k", path=corpus, format="text", valid="val", test=None)
        out = Path(tmp) / "data"
        run_prepare(PrepareConfig(data=data, spm=SpmConfig(vocab_size=vocab), out_dir=str(out)))
        train = ParallelData(out, "train", 1024)
        batches = [train.collate(ids) for ids in epoch_batches(train, tokens, 1, 0)[:n_batches]]
    peak_before = measure_peak(torch.float32, device, peak_s)
    print(f"matmul peak before: {peak_before / 1e9:.0f} GFLOP/s")
    configs = {name: shape(name, overrides) for name, overrides in shapes.items()}
    systems = {name: Ours(cfg, vocab, "fp32", device) for name, cfg in configs.items()}
    speed = alternate(systems, batches, round_s * rounds, rounds, device, warmup=2)
    src = sum(int((~b.src_pad_mask).sum()) for b in batches)
    tgt = sum(b.n_tgt_tokens for b in batches)
    results: dict = {"peak_gflops_before": round(peak_before / 1e9, 1)}
    for name, tok_s in speed.items():
        flops = matmul_flops_per_token(configs[name], vocab, src, tgt)
        print(
            f"{name:<22} {tok_s:7.0f} tgt tok/s  {tok_s / speed['small']:.2f}x small  "
            f"{tok_s * flops / 1e9:4.0f} GFLOP/s"
        )
        results[name] = {"tgt_tok_s": round(tok_s), "ratio_small": round(tok_s / speed["small"], 3),
                         "gflops": round(tok_s * flops / 1e9, 1)}  # fmt: skip
    peak_after = measure_peak(torch.float32, device, peak_s)
    print(f"matmul peak after: {peak_after / 1e9:.0f} GFLOP/s")
    results["peak_gflops_after"] = round(peak_after / 1e9, 1)
    print_json(results)


if __name__ == "__main__":
    main()
