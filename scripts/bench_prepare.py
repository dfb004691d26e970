"""Time `mt prepare` stage by stage on Multi30k and on a synthetic 1,000,000-pair corpus.

    python scripts/bench_prepare.py [--pairs 1000000] [--multi30k ../shared/data/multi30k]
    python scripts/bench_prepare.py --pairs 5000000 --corpus /tmp/syn5m --no-multi30k
    python scripts/bench_prepare.py --smoke        # seconds: 2,000 synthetic pairs, 1k pieces

Prints pairs/s for the three phases (reading and cleaning, one streaming pass; SentencePiece
training; encoding) and the peak resident memory of each prepare run (in its own process),
then one JSON line with every figure. Each run uses force=true so nothing is reused.
`--corpus` keeps the generated corpus in that folder and reuses it when it is already there
(5,000,000 pairs take about 1.2 GB and two minutes to generate).
`--input-sentence-size` overrides spm.input_sentence_size, to measure SentencePiece's memory.
`--smoke` checks that it runs: 2,000 synthetic pairs only, a vocabulary of 1,000 pieces.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import random
import resource
import tempfile
import time
from pathlib import Path

# run as `python scripts/bench_prepare.py`: its folder is on sys.path
from benchlib import multi30k_dir, print_json

from mt.config import CleanConfig, DataConfig, PrepareConfig, SpmConfig
from mt.prepare import run_prepare

WORDS = [
    "".join(
        random.Random(i).choices(
            "abcdefghijklmnopqrstuvwxyzäöüß", k=random.Random(-i).randint(2, 9)
        )
    )
    for i in range(20_000)
]


def synthetic_corpus(folder: Path, pairs: int, seed: int = 0) -> Path:
    """Write train/valid/test .en/.de files of Zipf-ish random words, `pairs` training pairs.

    Lines are written 100,000 at a time, so generating millions of pairs needs little memory.
    """
    rng = random.Random(seed)
    cum_weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(WORDS))))
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", pairs), ("valid", 1000), ("test", 1000)):
        with (
            open(folder / f"{split}.en", "w", encoding="utf-8") as en,
            open(folder / f"{split}.de", "w", encoding="utf-8") as de,
        ):
            for start in range(0, n, 100_000):
                for side in (en, de):
                    lengths = [rng.randint(4, 30) for _ in range(min(100_000, n - start))]
                    words = rng.choices(WORDS, cum_weights=cum_weights, k=sum(lengths))
                    lines, pos = [], 0
                    for length in lengths:
                        lines.append(" ".join(words[pos : pos + length]))
                        pos += length
                    side.write("\n".join(lines) + "\n")
    return folder


def time_prepare(name: str, data: DataConfig, spm: SpmConfig, out: Path) -> dict[str, float]:
    """Run prepare in a fresh process, so its peak resident memory is prepare's own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        row = pool.apply(_time_prepare, (name, data, spm, out))
    # Linux: the largest resident set of any finished child, in KiB
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    print(f"{name:<10} peak resident memory {row['peak_rss_mb']:,} MB", flush=True)
    return row


def _time_prepare(name: str, data: DataConfig, spm: SpmConfig, out: Path) -> dict[str, float]:
    cfg = PrepareConfig(data=data, clean=CleanConfig(), spm=spm, out_dir=str(out), force=True)
    start = time.perf_counter()
    manifest = run_prepare(cfg)
    total = time.perf_counter() - start
    t = manifest.timings_s
    read = sum(r["read"] for r in manifest.cleaning.values())
    train = manifest.pairs("train")
    encoded = sum(s["pairs"] for s in manifest.splits.values())
    row = {
        "corpus": name,
        "pairs_read": read,
        "total_s": round(total, 2),
        "input_sentence_size": cfg.spm.input_sentence_size,
        "read_clean_pairs_per_s": round(read / t["read_clean"]),
        "spm_train_pairs_per_s": round(train / t["spm"]),
        "encode_pairs_per_s": round(encoded / t["encode"]),
    }
    print(
        f"{name:<10} {read:>9,} pairs  total {total:6.1f}s"
        f" | read+clean {row['read_clean_pairs_per_s']:>9,}/s"
        f" | spm train {row['spm_train_pairs_per_s']:>9,}/s"
        f" | encode {row['encode_pairs_per_s']:>9,}/s",
        flush=True,
    )
    return row


def _synthetic(folder: Path, pairs: int) -> Path:
    """The synthetic corpus in `folder`: reused when its training files are there already."""
    if (folder / "train.en").is_file() and (folder / "train.de").is_file():
        print(f"(reusing the synthetic corpus in {folder})")
        return folder
    start = time.perf_counter()
    synthetic_corpus(folder, pairs)
    print(f"(generated {pairs:,} synthetic pairs in {time.perf_counter() - start:.1f}s)")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--corpus", help="folder to generate the synthetic corpus in, or reuse")
    parser.add_argument("--input-sentence-size", type=int, default=SpmConfig.input_sentence_size)
    parser.add_argument("--multi30k", default=str(multi30k_dir()))
    parser.add_argument("--no-multi30k", action="store_true", help="only the synthetic corpus")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args()
    spm = SpmConfig(input_sentence_size=args.input_sentence_size)
    if args.smoke:
        args.pairs, args.no_multi30k = 2000, True
        spm = SpmConfig(input_sentence_size=args.input_sentence_size, vocab_size=1000)
    print(f"cores: {os.cpu_count()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if Path(args.multi30k).is_dir() and not args.no_multi30k:
            data = DataConfig(
                name="multi30k",
                path=args.multi30k,
                format="text",
                valid="val",
                test="test_2016_flickr",
            )
            rows.append(time_prepare("multi30k", data, spm, tmp_path / "m30k"))
        corpus = _synthetic(Path(args.corpus) if args.corpus else tmp_path / "syn", args.pairs)
        data = DataConfig(name="syn", path=str(corpus))
        rows.append(time_prepare("synthetic", data, spm, tmp_path / "syn-bin"))
    print_json({"results": rows})


if __name__ == "__main__":
    main()
