"""Time and peak memory of an encoder forward + backward, full self-attention vs a window.

    python scripts/bench_attention.py [--lengths 512,2048,8192,16384] [--windows 0,128]
                                      [--d-model 256] [--layers 1] [--repeats 2]
                                      [--timeout 75] [--device cpu] [--positions relative]
    python scripts/bench_attention.py --smoke      # seconds: S 128, d_model 32

One sequence (batch 1) of S random tokens through a `small`-width encoder (d_model 256, 4 heads,
FFN 1024; one layer by default) with `model.attn_window` W (0 = full attention; W > 0 and
S > 3W takes the blocked path, memory ~ S * W). Each (S, W) runs in a fresh subprocess, so the
CPU peak is that process's peak RSS (`ru_maxrss`, which torch's allocations do reach, unlike
tracemalloc) above its RSS before the first forward; on CUDA it is
`torch.cuda.max_memory_allocated`. A config that fails (out of memory) or runs past --timeout
seconds is reported "skipped (reason)". Prints a table; the last line is JSON. --smoke runs
S 128 with windows 0 and 16 on a d_model 32 encoder, one timed run each.

On CPU, SDPA's flash kernel never holds the S x S scores, so full attention's memory stays
linear too and the window saves time; `--positions relative` (explicit scores, as SDPA's math
backend in CPU bf16 training) shows the S x S memory that blocks avoid.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

# run as `python scripts/bench_attention.py`: its folder is on sys.path
from benchlib import last_json_line, print_json, run_child

from mt.model import transformer
from mt.model.packing import Packing

VOCAB = 8000


def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(length: int, window: int, args: argparse.Namespace) -> dict:
    """One config, in this process: seconds per forward + backward and peak memory (MiB)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = transformer(
        src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, d_model=args.d_model, n_heads=args.heads,
        n_layers_enc=args.layers, n_layers_dec=1, d_ff=4 * args.d_model, dropout=0.0,
        max_positions=length, attn_window=window, positions=args.positions,
        max_relative_positions=16 if args.positions == "relative" else 0,
    ).to(device)  # fmt: skip
    encoder = model.encoder.train()
    src = torch.randint(4, VOCAB, (1, length), device=device)
    packing = Packing.dense(1, length, device)
    before = _rss_mib()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats + 1):  # the first is a warm-up, unless it is long already
        start = time.perf_counter()
        encoder(src, packing, None).float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        encoder.zero_grad(set_to_none=True)
        if times[0] > 5.0:  # long already: warm-up overhead is noise, keep the time budget
            break
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = _rss_mib() - before
    return {"seconds": min(times[1:] or times), "peak_mib": round(peak, 1)}


def run_config(length: int, window: int, args: argparse.Namespace) -> dict:
    """`measure` in a fresh subprocess -> its result, or {"skipped": reason}."""
    argv = [sys.executable, __file__, "--child", f"{length},{window}"]
    argv += ["--device", args.device, "--d-model", str(args.d_model), "--heads", str(args.heads)]
    argv += ["--layers", str(args.layers), "--repeats", str(args.repeats)]
    argv += ["--positions", args.positions]
    try:
        done = run_child(argv, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"over the {args.timeout:.0f} s timeout"}
    if done.returncode != 0:
        lines = (done.stderr.strip() or f"exit status {done.returncode}").splitlines()
        reason = "killed (out of memory?)" if done.returncode < 0 else lines[-1][:80]
        return {"skipped": reason}
    return last_json_line(done.stdout)


def _cell(result: dict) -> str:
    if "skipped" in result:
        return f"skipped ({result['skipped']})"
    return f"{result['seconds']:8.3f} s {result['peak_mib']:9.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="512,2048,8192,16384")
    parser.add_argument("--windows", default="0,128", help="0 = full attention")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up")
    parser.add_argument("--timeout", type=float, default=75.0, help="seconds per config")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--positions", default="sinusoidal", choices=["sinusoidal", "rope", "relative"]
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.lengths, args.windows, args.d_model, args.heads = "128", "0,16", 32, 2
        args.layers, args.repeats = 1, 1
    if args.child:  # one measurement, printed as JSON for the parent
        length, window = (int(x) for x in args.child.split(","))
        print(json.dumps(measure(length, window, args)))
        return
    lengths = [int(x) for x in args.lengths.split(",")]
    windows = [int(x) for x in args.windows.split(",")]
    where = torch.cuda.get_device_name() if args.device == "cuda" else (
        f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    )  # fmt: skip
    print(f"torch {torch.__version__}, {where}; encoder fwd+bwd, batch 1, d_model {args.d_model}, "
          f"{args.heads} heads, {args.layers} layer(s), {args.positions} positions; peak = "
          f"{'max_memory_allocated' if args.device == 'cuda' else 'RSS above start'}")  # fmt: skip
    names = {w: "full" if w == 0 else f"window {w}" for w in windows}
    print(f"{'S':>6} | " + " | ".join(f"{names[w]:<26}" for w in windows), flush=True)
    results: dict = {"device": args.device, "d_model": args.d_model, "layers": args.layers,
                     "positions": args.positions}  # fmt: skip
    for length in lengths:
        row = {names[w]: run_config(length, w, args) for w in windows}
        print(f"{length:>6} | " + " | ".join(f"{_cell(r):<26}" for r in row.values()), flush=True)
        results[str(length)] = row
    print_json(results)


if __name__ == "__main__":
    main()
