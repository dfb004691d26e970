"""Multi30k test2016 through a trained run: speed and BLEU per engine, precision and option.

    python scripts/bench_test2016.py --run-dir runs/multi30k_en_de [--precisions fp32,int8,bf16]
                                     [--engines] [--shortlist K] [--multi30k DIR]
    python scripts/bench_test2016.py --smoke      # seconds on CPU: that it runs, not speeds

Translates test2016 (batches of 64, beam 5 and greedy) with the run in each of --precisions
(default: auto, as `mt translate` picks) and reports sentences/s (median of 3 passes), BLEU
and the share of lines identical to the first system's. With --engines, also through
engine=ctranslate2 in float32 and int8. Every system also decodes with
decode.inter_threads=2 (two batches at once, one thread each): its speed-up and its share of
lines identical to one batch at a time. With --shortlist K, each mt system runs again with
decode.shortlist=K: its speed-up, BLEU, the share of lines identical to the full-vocabulary
output and the mean shortlist size. Each system runs in a process of its own (this script
again, with --test-system). The last line is JSON. --smoke trains a `tiny` model for a few
steps on a synthetic corpus and runs everything once on it, with --shortlist 8.

Decoding speed on random weights against Hugging Face and CTranslate2 is
`scripts/bench_translate.py`; where the time goes, `scripts/bench_profile.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import tempfile
from pathlib import Path

import sacrebleu

# run as `python scripts/bench_test2016.py`: its folder is on sys.path
from benchlib import (
    CPU,
    last_json_line,
    multi30k_dir,
    print_json,
    read_test2016,
    run_child,
    smoke_run,
    timed_translate,
)

from mt.config import DecodeConfig
from mt.decode.engine import make_translator
from mt.decode.run import load_run
from mt.runtime import pick_precision


def _child(args, *flags: str) -> dict:
    """Run this script with `flags` in a fresh process and return its JSON line."""
    argv = [sys.executable, __file__, "--run-dir", str(args.run_dir), "--multi30k",
            str(args.multi30k), "--shortlist", str(args.shortlist), *flags]  # fmt: skip
    if args.smoke:
        argv.append("--smoke")
    done = run_child(argv)
    if done.returncode != 0:
        sys.exit(f"bench_test2016: {' '.join(flags)} failed:\n{done.stderr[-2000:]}")
    return last_json_line(done.stdout)


def time_test_system(
    run_dir: Path, corpus: Path, engine: str, precision: str, shortlist: int, passes: int = 3
):
    """test2016 through one (engine, precision): per search, seconds (median of `passes`) and
    outputs; with `shortlist` K > 0 (engine torch), also with decode.shortlist=K and its mean
    size."""
    src, _ = read_test2016(corpus)
    _time_translator = functools.partial(timed_translate, passes=passes)
    run = load_run(run_dir, None, CPU)
    out = {"checkpoint": run.checkpoint.name, "vocab": run.tgt_tok.vocab_size}
    for beam in (5, 1):
        name = "beam5" if beam == 5 else "greedy"
        decode = DecodeConfig(beam=beam, batch_size=64)
        translator = make_translator(run, decode, CPU, precision, engine)
        out[name] = _time_translator(translator, src)
        two = dataclasses.replace(decode, inter_threads=2)  # 2 batches at once, 1 thread each
        out[f"{name}_inter2"] = _time_translator(
            make_translator(run, two, CPU, precision, engine), src
        )
        if shortlist and engine == "torch":
            decode = dataclasses.replace(decode, shortlist=shortlist)
            translator = make_translator(run, decode, CPU, precision, engine)
            sizes = _count_shortlists(translator)
            out[f"{name}_sl"] = (*_time_translator(translator, src), sum(sizes) / len(sizes))
    return out


def test_set_speed(args, systems: list[tuple[str, str]]) -> dict:
    """Translate test2016 with a trained run (batches of 64) in each (engine, precision), each
    in its own process, and score it; lines identical to the first system's output with the
    same search are counted. With --shortlist K > 0, each engine=torch system runs again with
    decode.shortlist=K, and its lines are compared with that system's full-vocabulary output."""
    _, ref = read_test2016(args.multi30k)
    shortlist = args.shortlist
    runs = {
        (engine, precision): _child(args, "--test-system", f"{engine}:{precision}")
        for engine, precision in systems
    }
    out, first = {}, {}
    for name in ("beam5", "greedy"):
        for (engine, precision), res in runs.items():
            seconds, hyps = res[name]
            first.setdefault(name, hyps)
            system = f"{'mt' if engine == 'torch' else 'ct2'}_{precision}"
            out[f"test2016_{system}_{name}"] = _report(
                system, name, seconds, hyps, ref, first[name], f"{systems[0][0]} {systems[0][1]}",
                res["checkpoint"],
            )  # fmt: skip
            fast, two_hyps = res[f"{name}_inter2"]
            out[f"test2016_{system}_inter2_{name}"] = _report(
                f"{system}_inter2", name, fast, two_hyps, ref, hyps,
                f"{system} a batch at a time", "decode.inter_threads=2", speedup=seconds / fast,
            )  # fmt: skip
            if f"{name}_sl" in res:
                fast, short_hyps, size = res[f"{name}_sl"]
                note = f"shortlist {size:.0f} of {res['vocab']}"
                out[f"test2016_{system}_sl{shortlist}_{name}"] = _report(
                    f"{system}_sl{shortlist}", name, fast, short_hyps, ref, hyps,
                    f"{system} full vocab", note, speedup=seconds / fast,
                )  # fmt: skip
    return out


def _count_shortlists(translator) -> list[int]:
    """The shortlist size of every batch the translator decodes from now on."""
    sizes: list[int] = []
    candidates = translator._candidates

    def counted(*args):
        vocab = candidates(*args)
        sizes.append(len(vocab))
        return vocab

    translator._candidates = counted
    return sizes


def _report(system, name, seconds, hyps, ref, baseline, baseline_name, note, speedup=None):
    """Print one test2016 line and return its numbers."""
    src_len = len(hyps)
    same = sum(a == b for a, b in zip(hyps, baseline, strict=True)) / src_len
    score = sacrebleu.corpus_bleu(hyps, [ref]).score
    faster = "" if speedup is None else f", {speedup:.2f}x {baseline_name}"
    print(f"test2016 {system:<14} {name:<6}: {seconds:5.1f} s for {src_len} sentences "
          f"({src_len / seconds:6.1f} sent/s{faster}), BLEU {score:.2f}, "
          f"{100 * same:5.1f}% lines as {baseline_name} ({note})", flush=True)  # fmt: skip
    row = {
        "seconds_median_of_3": round(seconds, 2), "sent_s": round(src_len / seconds, 1),
        "bleu": round(score, 2), "identical_to_first": round(same, 4),
    }  # fmt: skip
    if speedup is not None:  # a shortlist or inter_threads run, against its plain run
        row["identical_to_plain"] = row.pop("identical_to_first")
        row["speedup_over_plain"] = round(speedup, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="the trained run to time (not with --smoke)")
    parser.add_argument("--multi30k", type=Path, default=multi30k_dir())
    parser.add_argument(
        "--precisions", default="auto",
        help="the precisions to time test2016 in, e.g. fp32,int8,bf16 (default: auto)",
    )  # fmt: skip
    parser.add_argument(
        "--engines", action="store_true",
        help="also test2016 through engine=ctranslate2 in fp32 and int8",
    )  # fmt: skip
    parser.add_argument(
        "--shortlist", type=int, default=0, metavar="K",
        help="also test2016 with decode.shortlist=K in each mt precision",
    )  # fmt: skip
    parser.add_argument("--test-system", help=argparse.SUPPRESS)  # a child's engine:precision
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny trained run, one pass: checks that it runs"
    )
    args = parser.parse_args()
    if args.test_system:  # a child: one system, one JSON line
        engine, precision = args.test_system.split(":")
        passes = 1 if args.smoke else 3
        res = time_test_system(
            args.run_dir, args.multi30k, engine, precision, args.shortlist, passes
        )
        print(json.dumps(res))
        return
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="bench_test2016_") as tmp:
            if args.run_dir is None:
                args.run_dir, args.multi30k = smoke_run(Path(tmp))
                args.shortlist = args.shortlist or 8
            args.engines = True
            bench(args)
        return
    if args.run_dir is None:
        parser.error("--run-dir is required (a run trained by `mt train`), or --smoke")
    bench(args)


def bench(args: argparse.Namespace) -> None:
    """The parent: every system in turn, in processes of their own; prints the JSON line."""
    systems = [("torch", pick_precision(n, CPU)) for n in args.precisions.split(",")]
    if args.engines:
        systems += [("ctranslate2", "fp32"), ("ctranslate2", "int8")]
    print_json(test_set_speed(args, systems))


if __name__ == "__main__":
    main()
