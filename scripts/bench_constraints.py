"""What lexical constraints cost and give on Multi30k test2016, with a trained run.

    python scripts/bench_constraints.py --run-dir runs/multi30k_en_de [--beam 5]
    python scripts/bench_constraints.py --smoke     # seconds on CPU: a tiny model, 24 lines

Translates test2016 without constraints, then constrains each line to one reference word the
unconstrained output missed (the longest such word; lines that missed none stay free), as in
the terminology evaluations of Post & Vilar (2018). Prints sentences/s (median of 3 passes,
batches of 64), sacreBLEU, and the share of constraints met in the output text; the last line
is one JSON object. The constraints file is written next to the outputs (--out). --smoke trains
a `tiny` model for a few steps on a synthetic corpus (unless --run-dir is given) and makes one
pass, to check that the benchmark runs.
"""

from __future__ import annotations

import argparse
import string
import tempfile
from pathlib import Path

import sacrebleu
import torch

# run as `python scripts/bench_constraints.py`: its folder is on sys.path
from benchlib import multi30k_dir, print_json, read_test2016, smoke_run, timed_translate

from mt.config import DecodeConfig
from mt.decode.run import load_run
from mt.decode.torch_engine import TorchTranslator

CPU = torch.device("cpu")
PUNCTUATION = string.punctuation + "„“”«»‚‘’"


def _words(text: str) -> list[str]:
    return [w.strip(PUNCTUATION) for w in text.split() if w.strip(PUNCTUATION)]


def missed_word(hyp: str, ref: str) -> str:
    """The longest reference word (2+ characters) that is not a word of the output, or ""."""
    present = set(_words(hyp))
    missing = [w for w in _words(ref) if w not in present and len(w) >= 2]
    return max(missing, key=len, default="")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("/tmp/mt-bench-constraints"))
    parser.add_argument("--multi30k", type=Path, default=multi30k_dir())
    parser.add_argument("--smoke", action="store_true", help="a tiny run, one pass: seconds")
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="bench_constraints_") as tmp:
            if args.run_dir is None:
                args.run_dir, args.multi30k = smoke_run(Path(tmp))
            args.out = Path(tmp) / "out"
            bench(args, passes=1)
    elif args.run_dir is None:
        parser.error("--run-dir is required (or --smoke)")
    else:
        bench(args, passes=3)


def bench(args: argparse.Namespace, passes: int) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}, beam {args.beam}")  # fmt: skip
    src, ref = read_test2016(args.multi30k)
    run = load_run(args.run_dir, None, CPU)
    translator = TorchTranslator(run, DecodeConfig(beam=args.beam, batch_size=64), CPU, "fp32")
    free_s, free = timed_translate(translator, src, passes)
    terms = [missed_word(h, r) for h, r in zip(free, ref, strict=True)]
    wanted = [[t] if t else [] for t in terms]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "test2016.terms.de").write_text("\n".join(terms) + "\n", encoding="utf-8")
    steered_s, steered = timed_translate(translator, src, passes, constraints=wanted)
    n_terms = sum(1 for t in terms if t)
    met = sum(1 for t, h in zip(terms, steered, strict=True) if t and t in h)
    as_word = sum(1 for t, h in zip(terms, steered, strict=True) if t and t in _words(h))
    same_free = sum(
        1 for t, a, b in zip(terms, free, steered, strict=True) if not t and a == b
    )  # lines without a constraint must keep their output
    results = {}
    for name, seconds, hyps in (("free", free_s, free), ("constrained", steered_s, steered)):
        bleu = sacrebleu.corpus_bleu(hyps, [ref]).score
        results[name] = {"seconds": round(seconds, 2), "sent_s": round(len(src) / seconds, 1),
                         "bleu": round(bleu, 2)}  # fmt: skip
        print(f"{name:<12} {seconds:6.1f} s ({len(src) / seconds:6.1f} sent/s), BLEU {bleu:.2f}")
        (args.out / f"test2016.{name}.de").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    results["lines_constrained"] = n_terms
    results["constraints_met"] = met
    results["constraints_met_as_whole_word"] = as_word
    results["unconstrained_lines_unchanged"] = f"{same_free}/{len(src) - n_terms}"
    results["cost_ratio"] = round(steered_s / free_s, 2)
    print(f"{n_terms} of {len(src)} lines constrained to a missed reference word; met in the "
          f"output: {met} ({100 * met / max(n_terms, 1):.1f}%), {as_word} as a whole word; "
          f"unconstrained lines unchanged: "
          f"{same_free}/{len(src) - n_terms}; time ratio {steered_s / free_s:.2f}x")  # fmt: skip
    print_json(results)


if __name__ == "__main__":
    main()
