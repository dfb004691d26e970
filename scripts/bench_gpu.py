"""The GPU acceptance run: one prepared command that measures mt on one CUDA device.

    python scripts/bench_gpu.py --out runs/bench_gpu      # one H100/H200, about 7-8 minutes
    python scripts/bench_gpu.py --out DIR --parts train,decode   # some parts again
    python scripts/bench_gpu.py --smoke                   # CPU, tiny sizes: every part runs

Four parts, each in a process of its own under a time budget (`--budgets`); a part that fails
or overruns is recorded with its error and the run goes on, keeping what the part measured:

- tests: `python -m pytest -q -m gpu`, the CUDA tests' pass/fail/skip counts and output tail.
- train: target tokens/s of the `base` and `big` presets in bf16, and in fp16 with the
  GradScaler, for mt's `Trainer.train_step` and a Hugging Face MarianMTModel of the same size
  on the same Multi30k batches (bench_train.py's systems); model FLOPs utilization against the
  device's nominal dense peak, the share of the measured matmul peak, and peak memory. Each
  system trains alone (built, warmed up, timed, freed), so its peak memory is its own.
- decode: sentences/s with beam 4 and greedy on random `base` weights, end-of-sentence
  suppressed so every system runs the same steps, for mt (fp16), CTranslate2 float16 and
  Hugging Face `generate` (fp16) on the same batches (bench_translate.py's helpers).
- multi30k: `mt prepare` of the local Multi30k (MT_MULTI30K or --multi30k), then the
  25-minute recipe through `mt train`, cut to `--minutes` in bf16; its validation curve from
  the run's results.json (train.log if the run was cut short), greedy test2016 BLEU from the
  run and, while the budget lasts, beam-5 test2016 BLEU from `mt eval`.

Writes DIR/bench_gpu.json (every figure, device, torch and CUDA versions, date, each part's
status and seconds) and DIR/bench_gpu.md (tables for docs/performance.md) after every part,
each part's output in DIR/parts/, and prints the JSON as its last line. Without CUDA it exits
2 unless --smoke, which runs every part on CPU in about a minute: the `tiny` preset, fp32
where bf16 or fp16 is unavailable, synthetic corpora, a few training steps. A peer that is not
installed (transformers, ctranslate2) is recorded as skipped.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

# run as `python scripts/bench_gpu.py`: its folder is on sys.path
from bench_train import (
    HuggingFace,
    Ours,
    load_batches,
    matmul_flops_per_token,
    measure_peak,
)
from bench_translate import build_ct2, build_hf, time_ct2, time_hf
from benchlib import (
    CPU,
    VOCAB,
    multi30k_dir,
    print_json,
    random_decoder,
    read_test2016,
    run_for,
    smoke_corpus,
    synchronize,
    time_ours,
)

from mt.config import model_preset
from mt.runtime import DTYPES, bf16_supported

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("tests", "train", "decode", "multi30k")
BUDGETS = {"tests": 70, "train": 150, "decode": 75, "multi30k": 110}  # s; multi30k: + --minutes
SMOKE_BUDGETS = {"tests": 90, "train": 90, "decode": 90, "multi30k": 150}
# Nominal dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets,
# by a fragment of torch.cuda.get_device_name(); the first fragment found counts.
NOMINAL_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)
# Issue 33's goals for `big` in bf16 on one H100 (the rate: NVIDIA's fairseq fork on an A100, AMP).
GOALS = {"tok_s": 82_000, "mfu": 0.45}
# The Multi30k recipe shrunk for --smoke (the tiny model, a few steps on the synthetic corpus).
SMOKE_RECIPE = ("model=tiny", "train.max_steps=20", "train.warmup_steps=5", "train.valid_every=10",
                "train.log_every=5", "train.max_tokens=512", "train.threads=1")  # fmt: skip


# ---------------------------------------------------------------------------- the parent


def main() -> None:
    args = _parse_args()
    if args.part:  # a child: one part, its figures in DIR/parts/<part>.json
        PART_FUNCTIONS[args.part](args, Record(args.out / "parts" / f"{args.part}.json"))
        return
    if not args.smoke and not torch.cuda.is_available():
        print("bench_gpu: this needs a CUDA device and found none (on CPU, --smoke checks that "
              "every part runs).", file=sys.stderr)  # fmt: skip
        sys.exit(2)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        args.out = (args.out or Path(tmp)).resolve()  # --smoke without --out: a temporary one
        results = run_parts(args)
    print_json(results)
    failed = [p for p in results["parts"].values() if p["status"] in ("error", "timeout")]
    sys.exit(1 if failed else 0)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the JSON, the table and the logs")
    parser.add_argument("--parts", default=",".join(PARTS), help="some of " + ",".join(PARTS))
    parser.add_argument("--minutes", type=float, default=3.0, help="the Multi30k run's minutes")
    parser.add_argument("--multi30k", type=Path, default=_default_multi30k(),
                        help="the Multi30k folder (default: $MT_MULTI30K, else "
                        "../shared/data/multi30k, else shared/data/multi30k)")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=10240,
                        help="padded tokens per training batch in the train part")  # fmt: skip
    parser.add_argument("--budgets", default="",
                        help="seconds per part, e.g. tests=60,train=200 (multi30k: besides "
                        "--minutes)")  # fmt: skip
    parser.add_argument("--keep-run", action="store_true",
                        help="keep the Multi30k run's checkpoints in DIR/multi30k/run")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: that it runs")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # a child's part
    parser.add_argument("--until", type=float, help=argparse.SUPPRESS)  # a child's deadline
    args = parser.parse_args()
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"--parts {args.parts}: no part {', '.join(sorted(unknown))}")
    args.multi30k = args.multi30k.resolve()
    if args.smoke:
        args.minutes = 1.0
    return args


def _default_multi30k() -> Path:
    """benchlib.multi30k_dir(), or else shared/data/multi30k in this tree (where a GPU machine
    that gets a copy of the working tree finds the shared folder)."""
    corpus, in_tree = multi30k_dir(), ROOT / "shared" / "data" / "multi30k"
    return in_tree if not corpus.is_dir() and in_tree.is_dir() else corpus


def run_parts(args: argparse.Namespace) -> dict:
    """Run each part in a child process under its budget; write the JSON and the table after
    every part; returns the results."""
    budgets = dict(SMOKE_BUDGETS if args.smoke else BUDGETS)
    for item in filter(None, args.budgets.split(",")):
        name, seconds = item.split("=")
        budgets[name] = float(seconds)
    budgets["multi30k"] += 0 if args.smoke else 60 * args.minutes
    (args.out / "parts").mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(args.smoke), "parts": {}}
    for name in args.parts.split(","):
        part = run_part(name, args, budgets[name])
        results["parts"][name] = part
        if name == "train":
            results["goals"] = part.get("goals")
        print(f"{name}: {part['status']} in {part['seconds']:.0f} s", flush=True)
        write_atomic(args.out / "bench_gpu.json", json.dumps(results, indent=2) + "\n")
        write_atomic(args.out / "bench_gpu.md", markdown(results))
    return results


def machine(smoke: bool) -> dict:
    """The device, the versions and the date the figures belong to."""
    if torch.cuda.is_available() and not smoke:
        device = torch.cuda.get_device_name(0)
    else:
        capability = torch.backends.cpu.get_cpu_capability()
        device = f"CPU ({torch.get_num_threads()} threads, {capability})"
    versions = {}
    for package in ("transformers", "ctranslate2"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "command": " ".join(["python", "scripts/bench_gpu.py", *sys.argv[1:]]),
        "device": device,
        "nominal_peak_tflops": nominal_tflops(device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        **versions,
        "smoke": smoke,
    }


def nominal_tflops(device_name: str) -> float | None:
    """The device's nominal dense bf16/fp16 peak (TFLOP/s), None for an unlisted device."""
    return next((tflops for key, tflops in NOMINAL_TFLOPS if key in device_name), None)


def run_part(name: str, args: argparse.Namespace, budget: float) -> dict:
    """One part in a child process (its own session, killed whole at the budget); returns its
    figures with status (ok, skipped, error, timeout) and seconds."""
    path, log = args.out / "parts" / f"{name}.json", args.out / "parts" / f"{name}.log"
    path.unlink(missing_ok=True)
    argv = [sys.executable, __file__, "--part", name, "--out", str(args.out),
            "--until", str(time.time() + budget - 5), "--minutes", str(args.minutes),
            "--multi30k", str(args.multi30k), "--max-tokens", str(args.max_tokens)]  # fmt: skip
    argv += [flag for flag, on in (("--smoke", args.smoke), ("--keep-run", args.keep_run)) if on]
    start = time.monotonic()
    with log.open("w") as out:
        env = {**os.environ, "MT_MULTI30K": str(args.multi30k)}  # benchlib.multi30k_dir()
        child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # fmt: skip
        try:
            status = "ok" if child.wait(timeout=budget) == 0 else "error"
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the part and whatever it started
            child.wait()
            status = "timeout"
    part = json.loads(path.read_text()) if path.is_file() else {}
    if status == "ok" and "skipped" in part:
        status = "skipped"
    if status in ("error", "timeout"):
        part["error"] = log.read_text(errors="replace")[-3000:]
    return {"status": status, "seconds": round(time.monotonic() - start, 1), **part}


class Record(dict):
    """A part's figures, written to its file after every change, so that a part killed at
    its budget keeps what it had measured."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def put(self, key: str, value: object) -> None:
        self[key] = value
        write_atomic(self.path, json.dumps(self, indent=2) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write beside `path`, then rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- the parts


def _device(args: argparse.Namespace) -> torch.device:
    return CPU if args.smoke else torch.device("cuda")


def _left(args: argparse.Namespace) -> float:
    """Seconds left in this part's budget."""
    return args.until - time.time()


def _attempt(action: Callable[[], dict]) -> dict:
    """action()'s figures; a missing package as a skip, any other failure as an error."""
    try:
        return action()
    except ImportError as exc:
        return {"skipped": f"{exc.name or exc} is not installed"}
    except Exception as exc:  # noqa: BLE001 -- recorded, and the next measurement goes on
        return {"error": f"{type(exc).__name__}: {exc}"[:1000]}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def part_tests(args: argparse.Namespace, rec: Record) -> None:
    """The CUDA tests (`pytest -m gpu`): counts and the output's tail."""
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "gpu"]
    if args.smoke:  # the gpu-marked file alone: no collection of the whole suite in CI
        argv.append("tests/test_gpu.py")
    rec.put("command", " ".join(argv[1:]))
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                              timeout=max(_left(args) - 5, 5))  # fmt: skip
        output, returncode = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output = "".join(_text(s) for s in (exc.stdout, exc.stderr)) + "\n(timed out)"
        returncode = None
    counts = {kind: 0 for kind in ("passed", "failed", "skipped", "errors")}
    summary = [line for line in output.splitlines() if re.search(r"\bin [\d.]+s\b", line)]
    for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", "".join(summary[-1:])):
        counts["errors" if kind.startswith("error") else kind] = int(n)
    rec.put("returncode", returncode)
    rec.put("counts", counts)
    rec.put("tail", output[-2000:])


def _text(stream: bytes | str | None) -> str:
    if isinstance(stream, bytes):
        return stream.decode(errors="replace")
    return stream or ""


def _precisions(wanted: list[str], device: torch.device) -> list[str]:
    """`wanted` on CUDA; on CPU fp32 stands in for what the CPU lacks (fp16, bf16 without
    native bf16 matmuls), once."""
    if device.type == "cuda":
        return wanted
    usable = ["bf16" if p == "bf16" and bf16_supported(device) else "fp32" for p in wanted]
    return list(dict.fromkeys(usable))


def part_train(args: argparse.Namespace, rec: Record) -> None:
    """Training speed of mt and Hugging Face Marian, `base` and `big`, bf16 and fp16."""
    device, smoke = _device(args), args.smoke
    presets = ["tiny"] if smoke else ["base", "big"]
    precisions = _precisions(["bf16", "fp16"], device)
    seconds, warm = (0.3, 0.0) if smoke else (5.0, 1.5)
    max_tokens = 512 if smoke else args.max_tokens
    peaks = {p: measure_peak(DTYPES[p], device, 0.2 if smoke else 2.0) for p in precisions}
    rec.put("measured_peak_tflops", {p: round(v / 1e12, 2) for p, v in peaks.items()})
    with tempfile.TemporaryDirectory() as tmp:
        # Multi30k where benchlib finds it (the parent passes --multi30k on), else synthetic
        corpus = smoke_corpus(Path(tmp) / "corpus") if smoke else None
        batches, vocab = load_batches(Path(tmp), 4 if smoke else 40, vocab=320 if smoke else 8000,
                                      max_tokens=max_tokens, corpus=corpus)  # fmt: skip
    src_tokens = sum(int((~b.src_pad_mask).sum()) for b in batches)
    tgt_tokens = sum(b.n_tgt_tokens for b in batches)
    rec.put("batches", {
        "corpus": "smoke" if smoke else "multi30k" if multi30k_dir().is_dir() else "synthetic",
        "count": len(batches), "max_tokens": max_tokens, "vocab": vocab,
        "tgt_tokens_per_batch": round(tgt_tokens / len(batches)),
    })  # fmt: skip
    nominal = nominal_tflops(torch.cuda.get_device_name(device)) if not smoke else None
    for precision in precisions:  # bf16 first: the goal's precision, should the time run out
        for preset in presets:
            flops = matmul_flops_per_token(model_preset(preset), vocab, src_tokens, tgt_tokens)
            if _left(args) < 2 * (seconds + warm + 10):
                rec.put(f"{preset}_{precision}", {"skipped": "the part's time budget ran out"})
                continue
            measure = functools.partial(train_pair, preset, precision, batches, vocab, device)
            figures = measure(seconds, warm, flops, peaks[precision], nominal)
            rec.put(f"{preset}_{precision}", figures)
    rec.put("goals", goals(rec.get("big_bf16", {})) if not smoke else None)


def train_pair(
    preset: str,
    precision: str,
    batches: list,
    vocab: int,
    device: torch.device,
    seconds: float,
    warm: float,
    flops_per_token: float,
    peak: float,
    nominal_tflops: float | None,
) -> dict:
    """mt and Hugging Face on one preset and precision: tokens/s, MFU, peak share, memory."""
    cfg = model_preset(preset)
    out: dict = {}
    for name, system in (("mt", Ours), ("hf", HuggingFace)):
        make = functools.partial(system, cfg, vocab, precision, device)
        figures = _attempt(lambda make=make: train_speed(make, batches, seconds, warm, device))
        if "tok_s" in figures:
            flop_s = figures["tok_s"] * flops_per_token
            mfu = None  # against a bf16/fp16 tensor-core peak: not for fp32
            if nominal_tflops and precision != "fp32":
                mfu = flop_s / (nominal_tflops * 1e12)
            figures.update(
                tok_s=round(figures["tok_s"]), mfu=None if mfu is None else round(mfu, 3),
                peak_share=round(flop_s / peak, 3),
            )  # fmt: skip
        out[name] = figures
    if "tok_s" in out["mt"] and "tok_s" in out["hf"]:
        out["ratio"] = round(out["mt"]["tok_s"] / out["hf"]["tok_s"], 3)
    return out


def train_speed(
    make: Callable[[], object], batches: list, seconds: float, warm: float, device: torch.device
) -> dict:
    """Build a system, warm it up (at least 2 steps and `warm` seconds: kernels, allocator,
    batch shapes), then train for `seconds`; target tokens/s, steps and peak memory (GiB)."""
    system = make()
    cursor, start = 0, time.perf_counter()
    while cursor < 2 or time.perf_counter() - start < warm:
        system.step(batches[cursor % len(batches)])
        cursor += 1
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tokens, elapsed, end = run_for(system, batches, seconds, cursor, device)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del system
    return {"tok_s": tokens / elapsed, "steps": end - cursor,
            "memory_gib": None if memory is None else round(memory, 2)}  # fmt: skip


def goals(big_bf16: dict) -> dict:
    """Issue 33's goals for `big` in bf16, each with mt's figure and whether it is met."""
    mt = big_bf16.get("mt", {})
    out = {}
    for key, goal in GOALS.items():
        value = mt.get(key)
        out[f"big_bf16_{key}"] = {"above": goal, "mt": value,
                                  "met": None if value is None else value > goal}  # fmt: skip
    return out


def part_decode(args: argparse.Namespace, rec: Record) -> None:
    """Decoding sentences/s (beam 4, greedy) of mt, CTranslate2 and Hugging Face `generate`."""
    device = _device(args)
    preset, n_batches, length, rounds = ("tiny", 1, 4, 1) if args.smoke else ("base", 4, 24, 3)
    precision = "fp16" if device.type == "cuda" else "fp32"
    compute_type = {"fp16": "float16", "fp32": "float32"}[precision]
    gen = torch.Generator().manual_seed(1)
    shape = (64, length)
    cpu_batches = [torch.randint(4, VOCAB - 1, shape, generator=gen) for _ in range(n_batches)]
    batches = [b.to(device) for b in cpu_batches]
    setup = {"preset": preset, "batches": n_batches, "batch_size": 64, "length": length,
             "steps": length + 1, "precision": precision, "ct2": compute_type}  # fmt: skip
    rec.put("setup", setup)
    cfg = model_preset(preset)

    def hf():
        torch.manual_seed(0)
        return functools.partial(time_hf, build_hf(cfg).to(device), precision=precision,
                                 device=device)  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench_gpu_ct2_") as ct2_dir:
        makers = {
            "mt": lambda: functools.partial(time_ours, random_decoder(preset, precision, device),
                                            precision=precision, device=device),
            "ct2": lambda: functools.partial(time_ct2, build_ct2(cfg, Path(ct2_dir), compute_type,
                                                                 device=device.type)),
            "hf": hf,
        }  # fmt: skip
        for name, make in makers.items():
            if _left(args) < 15:
                rec.put(name, {"skipped": "the part's time budget ran out"})
                continue
            on = cpu_batches if name == "ct2" else batches  # CTranslate2 takes token strings
            rec.put(name, _attempt(lambda make=make, on=on: decode_speed(make, on, length, rounds)))
    for search in ("beam4", "greedy"):
        mt = rec["mt"].get(f"{search}_sent_s")
        for peer in ("ct2", "hf"):
            theirs = rec[peer].get(f"{search}_sent_s")
            if mt and theirs:
                rec.put(f"ratio_{peer}_{search}", round(mt / theirs, 2))


def decode_speed(make: Callable[[], Callable], batches: list, length: int, rounds: int) -> dict:
    """Sentences/s with beam 4 and greedy: the median of `rounds` passes over `batches`."""
    run = make()
    out = {}
    for beam, name in ((4, "beam4"), (1, "greedy")):
        run(batches[:1], beam=beam, length=4)  # warm-up
        seconds = statistics.median(run(batches, beam=beam, length=length) for _ in range(rounds))
        out[f"{name}_sent_s"] = round(64 * len(batches) / seconds, 1)
    return out


def part_multi30k(args: argparse.Namespace, rec: Record) -> None:
    """`mt prepare` + `mt train` (the recipe for --minutes in bf16): curve and test2016 BLEU.

    The prepared data and the run folder (checkpoints: hundreds of MB) go to a temporary
    folder, and the run's small files (results.json, train.log, config.yaml) are copied to
    DIR/multi30k; --keep-run keeps the whole run in DIR/multi30k/run instead.
    """
    folder = args.out / "multi30k"
    shutil.rmtree(folder, ignore_errors=True)  # this script's own folder: a run would resume
    folder.mkdir(parents=True)
    work = folder if args.keep_run else Path(tempfile.mkdtemp(prefix="bench_gpu_m30k_"))
    try:
        corpus = smoke_corpus(work / "corpus") if args.smoke else args.multi30k
        if not (corpus / "train.en.gz").is_file():
            rec.put("skipped", f"no Multi30k at {corpus} (set MT_MULTI30K or --multi30k)")
            return
        train_multi30k(args, rec, corpus, folder, work)
    finally:
        for name in ("results.json", "train.log", "config.yaml"):
            if not args.keep_run and (work / "run" / name).is_file():
                shutil.copy(work / "run" / name, folder / name)
        if not args.keep_run:
            shutil.rmtree(work, ignore_errors=True)


def train_multi30k(
    args: argparse.Namespace, rec: Record, corpus: Path, folder: Path, work: Path
) -> None:
    """Prepare `corpus` into work/data, train work/run, score it; logs in `folder`."""
    device = _device(args)
    precision = "bf16" if bf16_supported(device) else "fp32"
    data, run = work / "data", work / "run"
    prepare = ["prepare", "data=multi30k_local", f"data.path={corpus}", f"out_dir={data}"]
    prepare += ["spm.vocab_size=320"] if args.smoke else []
    rec.put("prepare", run_mt(prepare, folder / "prepare.log", _left(args) - 60))
    if rec["prepare"]["returncode"] != 0:
        raise RuntimeError(f"mt prepare failed; see {folder / 'prepare.log'}")
    recipe = ["experiment=multi30k_en_de", "data=multi30k_local", f"train.device={device.type}",
              f"train.precision={precision}", f"train.max_minutes={args.minutes:g}",
              *(SMOKE_RECIPE if args.smoke else ())]  # fmt: skip
    rec.put("recipe", "mt train " + " ".join(recipe))
    train = ["train", *recipe, f"data.path={corpus}", f"data_dir={data}", f"run_dir={run}"]
    rec.put("train", run_mt(train, folder / "train.out", _left(args) - (5 if args.smoke else 30)))
    rec.put("run", run_figures(run))
    if _left(args) > (5 if args.smoke else 25):
        rec.put("test2016_beam5", _attempt(lambda: beam_bleu(corpus, folder, run, args)))
    else:
        rec.put("test2016_beam5", {"skipped": "the part's time budget ran out"})


def run_mt(stage: list[str], log: Path, timeout: float) -> dict:
    """`python -m mt <stage...>` with output to `log`; past `timeout` it gets SIGTERM (mt train
    saves a checkpoint and stops), then SIGKILL 30 s later. Returns its return code and time."""
    start = time.monotonic()
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-m", "mt", *stage], cwd=ROOT, stdout=out,
                                 stderr=subprocess.STDOUT)  # fmt: skip
        try:
            child.wait(timeout=max(timeout, 1))
            cut = False
        except subprocess.TimeoutExpired:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            cut = True
    return {"returncode": child.returncode, "seconds": round(time.monotonic() - start, 1),
            "cut_at_budget": cut}  # fmt: skip


def run_figures(run: Path) -> dict:
    """Steps, minutes, the validation curve and greedy test BLEU of a run folder: from its
    results.json, or, for a run cut short, the validations its train.log recorded."""
    log = (run / "train.log").read_text(errors="replace") if (run / "train.log").is_file() else ""
    speeds = [float(s) for s in re.findall(r"\| (\d+) tgt tok/s", log)]
    out: dict = {"median_tgt_tok_s": round(statistics.median(speeds)) if speeds else None}
    if (run / "results.json").is_file():
        results = json.loads((run / "results.json").read_text())
        out.update({k: results.get(k) for k in ("step", "stop_reason", "final_checkpoint")})
        out.update({k: round(results[k], 2) for k in ("minutes", "test/bleu") if k in results})
        curve = results.get("history", [])
    else:
        curve = []
        for step, shown in re.findall(r"step (\d+) epoch \d+ \| valid (.*?)(?: \(best\))?$",
                                      log, flags=re.M):  # fmt: skip
            pairs = re.findall(r"(\w+) (-?[\d.]+)", shown)
            curve.append({"step": int(step), **{f"valid/{k}": float(v) for k, v in pairs}})
    out["curve"] = [{k: round(v, 3) for k, v in point.items()} for point in curve]
    return out


def beam_bleu(corpus: Path, folder: Path, run: Path, args: argparse.Namespace) -> dict:
    """`mt eval` of the run on test2016 with beam 5: BLEU, chrF (and the rest) and seconds."""
    src, ref = folder / "test2016.en", folder / "test2016.de"
    sources, references = read_test2016(corpus)
    src.write_text("\n".join(sources) + "\n", encoding="utf-8")
    ref.write_text("\n".join(references) + "\n", encoding="utf-8")
    report = folder / "eval.json"
    stage = ["eval", f"run_dir={run}", f"src={src}", f"ref={ref}", f"report={report}",
             "decode.beam=5", f"output={folder / 'test2016.hyp'}"]  # fmt: skip
    done = run_mt(stage, folder / "eval.log", _left(args) - 5)
    if done["returncode"] != 0:
        raise RuntimeError(f"mt eval failed; see {folder / 'eval.log'}")
    scores = next(iter(json.loads(report.read_text())["systems"].values()))
    return {"seconds": done["seconds"], **{k: v["score"] for k, v in scores.items()}}


PART_FUNCTIONS = {"tests": part_tests, "train": part_train, "decode": part_decode,
                  "multi30k": part_multi30k}  # fmt: skip


# ---------------------------------------------------------------------------- the table


def _n(value: float | None, spec: str = ",.0f", unit: str = "") -> str:
    return "–" if value is None else format(value, spec) + unit


def markdown(results: dict) -> str:
    """The figures as markdown for docs/performance.md."""
    m, parts = results["machine"], results["parts"]
    lines = [
        f"`{m['command']}` ({m['date'][:10]}; {m['device']}; torch "
        f"{m['torch']}, CUDA {m['cuda']}, CTranslate2 {m['ctranslate2']}, transformers "
        f"{m['transformers']}).",
        "",
        "Parts: " + ", ".join(f"{k} {p['status']} ({p['seconds']:.0f} s)" for k, p in parts.items())
        + ".",
    ]  # fmt: skip
    for name, table in (("tests", _md_tests), ("train", _md_train), ("decode", _md_decode),
                        ("multi30k", _md_multi30k)):  # fmt: skip
        if name in parts and parts[name]["status"] in ("ok", "timeout"):
            lines += ["", *table(parts[name])]
    return "\n".join(lines) + "\n"


def _md_tests(part: dict) -> list[str]:
    c = part.get("counts", {})
    return [f"CUDA tests (`{part.get('command')}`): {c.get('passed', 0)} passed, "
            f"{c.get('failed', 0)} failed, {c.get('errors', 0)} errors, "
            f"{c.get('skipped', 0)} skipped."]  # fmt: skip


def _md_train(part: dict) -> list[str]:
    b = part.get("batches", {})
    peaks = ", ".join(f"{k} {v}" for k, v in part.get("measured_peak_tflops", {}).items())
    lines = [
        f"Training, target tokens/s on the same {b.get('count')} {b.get('corpus')} batches (at "
        f"most {_n(b.get('max_tokens'))} padded tokens, {_n(b.get('tgt_tokens_per_batch'))} "
        "target tokens a batch on average); MFU against the nominal dense peak, share of the "
        f"measured matmul peak ({peaks} TFLOP/s), peak memory:",
        "",
        "| preset, precision | mt tok/s | HF tok/s | mt / HF | mt MFU | HF MFU "
        "| mt / HF share of measured peak | mt / HF GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, row in part.items():
        if not isinstance(row, dict) or "mt" not in row:
            continue
        mt, hf = row["mt"], row["hf"]
        lines.append(
            f"| {key.replace('_', ', ')} | {_n(mt.get('tok_s'))} | {_n(hf.get('tok_s'))} "
            f"| {_n(row.get('ratio'), '.2f', 'x')} | {_n(mt.get('mfu'), '.0%')} "
            f"| {_n(hf.get('mfu'), '.0%')} | {_n(mt.get('peak_share'), '.0%')} / "
            f"{_n(hf.get('peak_share'), '.0%')} | {_n(mt.get('memory_gib'), '.1f')} / "
            f"{_n(hf.get('memory_gib'), '.1f')} |"
        )
    for goal in (part.get("goals") or {}).values():
        met = {True: "met", False: "not met", None: "not measured"}[goal["met"]]
        lines += ["", f"Goal, `big` in bf16: above {goal['above']:,} — mt {goal['mt']} ({met})."]
    return lines


def _md_decode(part: dict) -> list[str]:
    s = part.get("setup", {})
    lines = [
        f"Decoding, sentences/s on random `{s.get('preset')}` weights, {s.get('batches')} "
        f"batches of {s.get('batch_size')} x {s.get('length')}, {s.get('steps')} forced steps; "
        f"mt and Hugging Face in {s.get('precision')}, CTranslate2 {s.get('ct2')}:",
        "",
        "| search | mt | CTranslate2 | HF generate | mt / CT2 | mt / HF |",
        "|---|---|---|---|---|---|",
    ]
    for search, shown in (("beam4", "beam 4"), ("greedy", "greedy")):
        speeds = [_n(part.get(k, {}).get(f"{search}_sent_s"), ",.1f") for k in ("mt", "ct2", "hf")]
        ratios = [_n(part.get(f"ratio_{k}_{search}"), ".2f", "x") for k in ("ct2", "hf")]
        lines.append(f"| {shown} | {' | '.join([*speeds, *ratios])} |")
    return lines


def _md_multi30k(part: dict) -> list[str]:
    r, beam = part.get("run", {}), part.get("test2016_beam5", {})
    lines = [
        f"Multi30k, `{part.get('recipe')}`: step {r.get('step')} after "
        f"{_n(r.get('minutes'), '.1f')} minutes ({r.get('stop_reason')}), median "
        f"{_n(r.get('median_tgt_tok_s'))} target tok/s; test2016 BLEU greedy "
        f"{_n(r.get('test/bleu'), '.2f')}, beam 5 {_n(beam.get('BLEU'), '.2f')}.",
        "",
        "| step | valid loss | valid BLEU |",
        "|---|---|---|",
    ]
    for point in r.get("curve", []):
        lines.append(f"| {point['step']} | {_n(point.get('valid/loss'), '.3f')} "
                     f"| {_n(point.get('valid/bleu'), '.2f')} |")  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
