"""Where mt's decoding time goes: torch.profiler over mt's beam 5 and greedy search.

    python scripts/bench_profile.py [--preset small] [--length 24] [--precision auto]
    python scripts/bench_profile.py --smoke      # seconds on CPU: that it runs

One batch of 64 random source sentences through mt's `preset` model on random weights, laid
out as `mt translate` lays it out, end-of-sentence suppressed so every search runs `--length`
+ 1 steps. Prints the aten ops per decoder step and the ops that take the time (share of self
CPU time, calls, microseconds per call). The last line is JSON. Speeds against the peers are
`scripts/bench_translate.py`.
"""

from __future__ import annotations

import argparse

import torch

# run as `python scripts/bench_profile.py`: its folder is on sys.path
from benchlib import CPU, VOCAB, print_json, random_decoder, time_ours
from torch.profiler import ProfilerActivity, profile

from mt.runtime import pick_precision


def profile_steps(args: argparse.Namespace, precision: str) -> dict:
    """Ops per step and the top ops of one batch, beam 5 and greedy."""
    ours = random_decoder(args.preset, precision)
    batch = [torch.randint(4, VOCAB - 1, (64, args.length))]
    out = {}
    for beam in (5, 1):
        name = "beam5" if beam == 5 else "greedy"
        time_ours(ours, batch, beam, 4, precision)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            total = time_ours(ours, batch, beam, args.length, precision)
        events = prof.key_averages()
        n_ops = sum(e.count for e in events if e.key.startswith("aten::"))
        steps = args.length + 1
        print(f"profile {name}: {total:.2f} s, {n_ops / steps:.0f} aten ops per step "
              f"({n_ops} in {steps} steps); top ops by self CPU time:")  # fmt: skip
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
        self_total = sum(e.self_cpu_time_total for e in events)
        for e in top:
            share = 100 * e.self_cpu_time_total / self_total
            print(f"  {e.key:<40} {share:5.1f}%  {e.count:6d} calls  "
                  f"{e.self_cpu_time_total / max(e.count, 1):8.1f} us/call")  # fmt: skip
        out[f"profile_{name}"] = {
            "ops_per_step": round(n_ops / steps),
            "top": {e.key: round(100 * e.self_cpu_time_total / self_total, 1) for e in top[:6]},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--length", type=int, default=24, help="source and output length")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32", "int8"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.length = "tiny", 4
    precision = pick_precision(args.precision, CPU)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {precision}")
    print_json({"precision": precision, **profile_steps(args, precision)})


if __name__ == "__main__":
    main()
