"""Every benchmark in scripts/ still runs: `python scripts/<name>.py --smoke` exits 0 and its
last line is JSON (tiny sizes, synthetic data, CPU; no Multi30k and no trained run needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted(p.stem for p in (ROOT / "scripts").glob("bench_*.py"))


def test_every_benchmark_is_listed() -> None:
    assert {"bench_translate", "bench_serve", "bench_constraints"} <= set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_smoke(name: str) -> None:
    done = subprocess.run(
        [sys.executable, f"scripts/{name}.py", "--smoke"],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{name} --smoke failed:\n{done.stderr[-3000:]}"
    lines = done.stdout.strip().splitlines()
    assert lines, f"{name} --smoke printed nothing"
    assert isinstance(json.loads(lines[-1]), dict)
