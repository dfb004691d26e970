"""The CPU kernel choices of mt's decoding, each against the plain PyTorch call it replaces.

    python scripts/bench_kernels.py [--rounds 5]
    python scripts/bench_kernels.py --smoke        # seconds: checks that it runs

1. The output projection [8000, 256] and the decoder-step linears of the `small` preset, for
   1, 5, 16, 64 and 320 rows: PyTorch's default GEMM (`F.linear`, MKL on x86) against
   oneDNN with the weight packed once (`mt.model.projection.OneDNNRows`).
2. Greedy and beam picks over log-probs [64, 8000] and [64, 5 x 8000]: `max` and `topk` against
   the blockwise search of `mt.search` (`amax` over blocks of 64, then within the best blocks).
3. Greedy and beam search of 2 x 64 sentences (`small`, random weights, 25 forced steps) with
   the lean decoder step (`DecoderLayer.step`) and without it (`DecoderLayer.forward`).

Each pair alternates, --rounds times; medians of microseconds (1, 2) or sentences/s (3) and
the ratio plain / ours are printed, and the last line is JSON with every figure. Times are this
machine's at this moment: run nothing else. --smoke: one round of a few calls, 1 and 64 rows,
and the search of 2 x 4 sentences of length 4 with the `tiny` preset.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import statistics
import time

import torch
import torch.nn.functional as F

# run as `python scripts/bench_kernels.py`: its folder is on sys.path
from benchlib import print_json

from mt.config import model_preset
from mt.decode import blockwise
from mt.decode.beam import beam_search
from mt.decode.greedy import greedy_search
from mt.decode.layout import for_decoding
from mt.decode.search import Limits
from mt.model import transformer
from mt.model.projection import OneDNNRows
from mt.tokenizer import BOS_ID, EOS_ID

VOCAB = 8000
CPU = torch.device("cpu")


def _us(fn, n: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def _pair(name: str, plain, ours, rounds: int, n: int) -> dict:
    times = {"plain": [], "ours": []}
    for _ in range(rounds):
        times["plain"].append(_us(plain, n))
        times["ours"].append(_us(ours, n))
    a, b = statistics.median(times["plain"]), statistics.median(times["ours"])
    print(f"  {name:<34} plain {a:9.1f} us | ours {b:9.1f} us | {a / b:5.2f}x", flush=True)
    return {name: {"plain_us": round(a, 1), "ours_us": round(b, 1), "ratio": round(a / b, 2)}}


def gemms(rounds: int, row_counts=(1, 5, 16, 64, 320), calls: int | None = None) -> dict:
    print("1. linear layers: F.linear (plain) against oneDNN with a packed weight (ours)")
    cfg = model_preset("small")
    d, ff = cfg.d_model, cfg.d_ff
    out = {}
    for rows in row_counts:
        for n_out, n_in in ((VOCAB, d), (3 * d, d), (ff, d), (d, ff)):
            x, w = torch.randn(rows, n_in), torch.randn(n_out, n_in)
            plain, ours = functools.partial(F.linear, x, w), functools.partial(OneDNNRows(w), x)
            n = calls or max(5, int(2e8 / (rows * n_in * n_out + 1e6)))
            out.update(_pair(f"{rows} rows x [{n_out}, {n_in}]", plain, ours, rounds, n))
    return out


def picks(rounds: int, calls: int | None = None) -> dict:
    print("2. picks: torch's max / topk (plain) against mt.decode.blockwise's ones (ours)")
    lprobs = torch.randn(64, VOCAB).log_softmax(dim=1)
    flat = torch.randn(64, 5 * VOCAB).log_softmax(dim=1)
    out = _pair("greedy argmax [64, 8000]", lambda: lprobs.max(dim=1),
                lambda: blockwise.pick_argmax(lprobs), rounds, calls or 200)  # fmt: skip
    out.update(_pair("beam top-10 [64, 40000]", lambda: flat.topk(10, dim=1),
                     lambda: blockwise.top_k(flat, 10), rounds, calls or 50))  # fmt: skip
    return out


def lean(rounds: int, preset: str = "small", rows: int = 64, length: int = 24) -> dict:
    print(f"3. search, 2 x {rows} sentences: DecoderLayer.forward (plain) against .step (ours)")
    module = importlib.import_module("mt.model.transformer")
    torch.manual_seed(0)
    model = transformer(**vars(model_preset(preset)), src_vocab_size=VOCAB, tgt_vocab_size=VOCAB)
    model = for_decoding(model.eval(), "fp32", CPU)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(4, VOCAB, (rows, length), generator=gen) for _ in range(2)]
    limits = Limits(BOS_ID, EOS_ID, max_len_a=0.0, max_len_b=length)
    # eos never wins: every output runs 25 steps
    step = model.decode_step
    model.decode_step = lambda tokens, state: step(tokens, state).index_fill_(1, _EOS, -1e9)
    lean_step = module.lean_step
    searches = {
        "beam 5": lambda src: beam_search(model, src, src == 0, limits, beam=5),
        "greedy": lambda src: greedy_search(model, src, src == 0, limits),
    }
    out = {}
    for name, search_fn in searches.items():
        times = {"plain": [], "ours": []}
        for _ in range(rounds):
            for which in ("plain", "ours"):
                module.lean_step = lean_step if which == "ours" else (lambda x: False)
                start = time.perf_counter()
                for src in batches:
                    search_fn(src)
                times[which].append(time.perf_counter() - start)
        module.lean_step = lean_step
        a, b = statistics.median(times["plain"]), statistics.median(times["ours"])
        print(f"  {name:<34} plain {2 * rows / a:7.1f} sent/s | ours {2 * rows / b:7.1f} sent/s | "
              f"{a / b:5.2f}x", flush=True)  # fmt: skip
        out[name] = {"plain_sent_s": round(2 * rows / a, 1), "ours_sent_s": round(2 * rows / b, 1),
                     "ratio": round(a / b, 2)}  # fmt: skip
    return out


_EOS = torch.tensor([EOS_ID])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rounds = 1 if args.smoke else args.rounds
    with torch.no_grad():
        results = {
            "gemms": gemms(rounds, *(((1, 64), 2) if args.smoke else ())),
            "picks": picks(rounds, 2 if args.smoke else None),
            "search": lean(rounds, *(("tiny", 4, 4) if args.smoke else ())),
        }
    print_json(results)


if __name__ == "__main__":
    main()
