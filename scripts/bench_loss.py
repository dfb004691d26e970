"""The fused projection + loss of training (`mt.loss`) by chunk size, against the unfused loss.

    python scripts/bench_loss.py [--vocabs 8000,58102] [--tokens 2048] [--rounds 5]
    python scripts/bench_loss.py --smoke      # seconds: checks that it runs

For each vocabulary (8,000: mt's recipes; 58,102: an imported opus-mt-en-de) and precision
(fp32; bf16 where the CPU has it), forward and backward of `projected_label_smoothed_nll` on
--tokens rows of width --dim, with the chunk rule's floor `mt.loss.MIN_ROWS` set to each of
--min-rows (1: the cache rule alone; the module's value is what training uses), and the plain
computation it replaces (logits, F.cross_entropy with label smoothing, autograd). Each variant
alternates with the others, --rounds times; medians in milliseconds and the ratio to the
module's rule are printed, and the last line is JSON with every figure. Times are this
machine's at this moment: run nothing else.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# run as `python scripts/bench_loss.py`: its folder is on sys.path
from benchlib import print_json

import mt.loss
from mt.loss import projected_label_smoothed_nll
from mt.runtime import bf16_supported

CPU = torch.device("cpu")


def _plain(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.T).float()
    return F.cross_entropy(logits, target, label_smoothing=0.1, reduction="sum")


def _fused(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return projected_label_smoothed_nll(hidden, weight, target, 0.1)[0]


def _time(fn, min_rows: int | None, hidden, weight, target, precision: str) -> float:
    """Milliseconds of one forward and backward."""
    if min_rows is not None:
        mt.loss.MIN_ROWS = min_rows
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = fn(h, w, target)
    loss.backward()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabs", default="8000,58102")
    parser.add_argument("--tokens", type=int, default=2048, help="target tokens (rows)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--min-rows", default="1,128,256,512,1024")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.vocabs, args.tokens, args.dim, args.min_rows, args.rounds = "500", 64, 32, "1,16", 1
    ours = mt.loss.MIN_ROWS
    floors = sorted({*map(int, args.min_rows.split(",")), ours})
    precisions = ["fp32"] + (["bf16"] if bf16_supported(CPU) else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}; training's MIN_ROWS = {ours}")  # fmt: skip
    results: dict = {"min_rows": ours, "tokens": args.tokens, "dim": args.dim}
    for vocab in map(int, args.vocabs.split(",")):
        torch.manual_seed(0)
        hidden = torch.randn(args.tokens, args.dim)
        weight = torch.randn(vocab, args.dim) * args.dim**-0.5
        target = torch.randint(0, vocab, (args.tokens,))
        for precision in precisions:
            variants = {f"min_rows={n}": (_fused, n) for n in floors} | {"plain": (_plain, None)}
            times: dict[str, list[float]] = {name: [] for name in variants}
            for fn, n in variants.values():  # warm-up
                _time(fn, n, hidden, weight, target, precision)
            for _ in range(args.rounds):
                for name, (fn, n) in variants.items():
                    times[name].append(_time(fn, n, hidden, weight, target, precision))
            mt.loss.MIN_ROWS = ours
            median = {name: statistics.median(t) for name, t in times.items()}
            base = median[f"min_rows={ours}"]
            print(f"vocab {vocab}, {precision} (cache rule: "
                  f"{mt.loss.CHUNK_ELEMENTS // vocab} rows per chunk):")  # fmt: skip
            for name, ms in median.items():
                print(f"  {name:<14} {ms:9.1f} ms   {ms / base:5.2f}x the training rule")
            results[f"{vocab}_{precision}_ms"] = {k: round(v, 2) for k, v in median.items()}
    print_json(results)


if __name__ == "__main__":
    main()
