"""Average the model weights of checkpoints (the last N of a run, or the files given).

    python scripts/average_checkpoints.py RUN_DIR --last 5 [--out RUN_DIR/checkpoints/averaged.pt]
    python scripts/average_checkpoints.py --inputs a.pt b.pt c.pt --out avg.pt

Pass it to `mt translate run_dir=RUN_DIR checkpoint=RUN_DIR/checkpoints/averaged.pt`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mt.checkpoint import average_checkpoints, save_checkpoint, step_checkpoints
from mt.errors import MTError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="run folder of mt train")
    parser.add_argument("--last", type=int, default=5, help="average the newest N step_*.pt")
    parser.add_argument("--inputs", nargs="+", type=Path, help="explicit checkpoint files")
    parser.add_argument("--out", type=Path, help="output file (default: averaged.pt in the run)")
    args = parser.parse_args()
    if args.inputs:
        paths = args.inputs
    elif args.run_dir:
        paths = step_checkpoints(args.run_dir / "checkpoints")[-args.last :]
    else:
        parser.error("give RUN_DIR or --inputs")
    out = args.out or (args.run_dir or paths[-1].parent.parent) / "checkpoints" / "averaged.pt"
    try:
        save_checkpoint(average_checkpoints(list(paths)), out)
    except MTError as exc:
        print(f"average_checkpoints: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"averaged {', '.join(p.name for p in paths)} -> {out}")


if __name__ == "__main__":
    main()
