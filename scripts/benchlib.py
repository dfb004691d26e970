"""Helpers shared by the benchmark scripts in this folder (`import benchlib`).

A script run as `python scripts/<name>.py` has this folder on sys.path, so it imports this
module by name. Here: where Multi30k lies, reading its test2016, timing a translator (median of
passes), a child process's JSON line, the final JSON line, and, for `--smoke` runs, a tiny
Multi30k-shaped synthetic corpus and a tiny model trained on it for a few steps; and, for the
decoding benchmarks, mt's search on a random model with end-of-sentence suppressed (`NoEos`,
`time_ours`, on CPU or a CUDA device, `synchronize`d), so every system decodes exactly the same
number of steps; and, for the training benchmarks, `run_for` and `alternate` (systems trained
in alternating rounds on the same batches, so that machine drift hits each alike) and
`plain_update`, the peer loop's update.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from mt.config import (
    DataConfig,
    PrepareConfig,
    SpmConfig,
    TrainConfig,
    TrainLoopConfig,
    model_preset,
)
from mt.decode.beam import beam_search
from mt.decode.greedy import greedy_search
from mt.decode.layout import for_decoding
from mt.decode.search import Limits
from mt.model import transformer
from mt.prepare import run_prepare
from mt.runtime import autocast
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID
from mt.train import run_train

MULTI30K_DEFAULT = "../shared/data/multi30k"
VOCAB = 8000  # the random models' vocabulary
CPU = torch.device("cpu")


def multi30k_dir() -> Path:
    """The Multi30k folder: $MT_MULTI30K, else ../shared/data/multi30k."""
    return Path(os.environ.get("MT_MULTI30K", MULTI30K_DEFAULT))


def read_test2016(corpus: Path) -> tuple[list[str], list[str]]:
    """Multi30k test2016 (test_2016_flickr.{en,de}.gz in `corpus`): sources and references."""
    sides = []
    for lang in ("en", "de"):
        with gzip.open(corpus / f"test_2016_flickr.{lang}.gz", "rt", encoding="utf-8") as f:
            sides.append(f.read().splitlines())
    return sides[0], sides[1]


def timed_translate(translator, src: list[str], passes: int = 3, **kwargs) -> tuple[float, list]:
    """Median seconds of `passes` passes over src (after a warm-up batch of 64) and the best
    output of every line; `kwargs` (e.g. constraints, one per line) go to `translate`."""
    translator.translate(src[:64], **{k: v[:64] for k, v in kwargs.items()})  # warm-up
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        hyps = [h[0][0] if h else "" for h in translator.translate(src, **kwargs)]
        times.append(time.perf_counter() - start)
    return statistics.median(times), hyps


def last_json_line(stdout: str) -> dict:
    """The JSON object on the last line of a benchmark's (or its child's) output."""
    return json.loads(stdout.strip().splitlines()[-1])


def run_child(argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a child process (usually this script again with a child flag), capturing text."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def print_json(results: dict) -> None:
    """The final line of every benchmark: one JSON object."""
    print(json.dumps(results), flush=True)


# --smoke: a tiny corpus and a tiny trained run, so every script runs in seconds on CPU.

_EN = "a the man woman dog cat sees runs house red big small green eats apple walks".split()
_DE = "ein der Mann Frau Hund Katze sieht läuft Haus rot groß klein grün isst Apfel geht".split()


def smoke_corpus(folder: Path, train: int = 400, valid: int = 20, test: int = 24) -> Path:
    """A Multi30k-shaped synthetic corpus in `folder` (train/val/test_2016_flickr .en/.de.gz,
    the German side a word-by-word image of the English); returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate((("train", train), ("val", valid),
                                       ("test_2016_flickr", test))):  # fmt: skip
        rng = random.Random(seed)
        en, de = [], []
        for _ in range(n):
            idx = [rng.randrange(len(_EN)) for _ in range(rng.randint(3, 9))]
            en.append(" ".join(_EN[i] for i in idx))
            de.append(" ".join(_DE[i] for i in idx))
        for lang, lines in (("en", en), ("de", de)):
            with gzip.open(folder / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
    return folder


def smoke_run(folder: Path, steps: int = 20) -> tuple[Path, Path]:
    """A `tiny` model trained for `steps` steps on `smoke_corpus` under `folder`, on CPU;
    returns (run folder, corpus folder)."""
    corpus = smoke_corpus(folder / "multi30k")
    data = DataConfig(name="smoke", path=str(corpus), format="text", valid="val", test=None)
    spm = SpmConfig(vocab_size=320)
    run_prepare(PrepareConfig(data=data, spm=spm, out_dir=str(folder / "data")))
    loop = TrainLoopConfig(
        device="cpu", precision="fp32", max_tokens=512, max_steps=steps, warmup_steps=5,
        lr=3e-3, log_every=10, valid_every=0, threads=1,
    )  # fmt: skip
    cfg = TrainConfig(
        data_dir=str(folder / "data"), run_dir=str(folder / "run"), data=data, spm=spm,
        model=model_preset("tiny"), train=loop,
    )  # fmt: skip
    run_train(cfg)
    return folder / "run", corpus


# Decoding on random weights: every hypothesis runs to its length cap.


class NoEos(torch.nn.Module):
    """Our model with end-of-sentence suppressed, so every hypothesis runs to the length cap."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def encode(self, src, src_pad_mask):
        return self.model.encode(src, src_pad_mask)

    def init_state(self, memory, src_pad_mask, max_len, rows_per_source=1, vocab=None):
        return self.model.init_state(memory, src_pad_mask, max_len, rows_per_source, vocab)

    def decode_step(self, tokens, state):
        logits = self.model.decode_step(tokens, state)
        logits[:, EOS_ID] = float("-inf")
        return logits


def each_batch(decode, batches, inter: int) -> float:
    """Seconds to run decode(src) on every batch: one after another, or (inter > 1) inter
    batches at once from a thread pool, as `mt translate decode.inter_threads=N` does."""
    start = time.perf_counter()
    if inter == 1:
        for src in batches:
            decode(src)
    else:
        with ThreadPoolExecutor(inter) as pool:
            list(pool.map(decode, batches))
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_for(
    system, batches: list, seconds: float, cursor: int, device: torch.device = CPU
) -> tuple[float, float, int]:
    """Train `system` (its `step(batch)`) on batches[cursor:] until `seconds` pass, one step at
    least; returns (target tokens, elapsed seconds, next batch index), waited for on CUDA."""
    synchronize(device)
    tokens, start = 0.0, time.perf_counter()
    while True:
        batch = batches[cursor % len(batches)]
        system.step(batch)
        tokens, cursor = tokens + batch.n_tgt_tokens, cursor + 1
        if time.perf_counter() - start >= seconds:
            break
    synchronize(device)
    return tokens, time.perf_counter() - start, cursor


def plain_update(
    model: torch.nn.Module, opt, scaler, logits: torch.Tensor, labels: torch.Tensor,
    ignore_index: int, n_tokens: int,
) -> None:  # fmt: skip
    """The update of a plain transformers training loop (the peer the training benchmarks time
    mt against): summed label-smoothed (0.1) cross-entropy of `logits` [B, T, V] against
    `labels` [B, T] per target token, backward through `scaler`, clipping at 1.0, the step."""
    loss = F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=ignore_index,
        label_smoothing=0.1, reduction="sum",
    )  # fmt: skip
    scaler.scale(loss / n_tokens).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


def alternate(
    systems: dict, batches: list, seconds: float, rounds: int, device: torch.device = CPU,
    warmup: int = 3,
) -> dict[str, float]:  # fmt: skip
    """Target tokens/s of each system: `warmup` steps each (allocator, oneDNN primitives, CUDA
    kernels, torch.compile's graphs), then `rounds` rounds in which every system trains for
    seconds / rounds in turn, each going on through the batches where it stopped."""
    for system in systems.values():
        for batch in batches[:warmup]:
            system.step(batch)
    synchronize(device)
    totals = {name: [0.0, 0.0] for name in systems}
    cursors = dict.fromkeys(systems, warmup)
    for _ in range(rounds):
        for name, system in systems.items():
            tokens, elapsed, cursors[name] = run_for(
                system, batches, seconds / rounds, cursors[name], device
            )
            totals[name][0] += tokens
            totals[name][1] += elapsed
    return {name: tokens / elapsed for name, (tokens, elapsed) in totals.items()}


def time_ours(
    model, batches, beam: int, length: int, precision: str, inter: int = 1, device=CPU
) -> float:
    """Seconds for mt's search over `batches` (on `device`), each batch waited for."""

    def decode(src):
        mask = src == PAD_ID
        limits = Limits(BOS_ID, EOS_ID, max_len_a=0.0, max_len_b=length)
        with autocast(precision, device):
            if beam == 1:
                greedy_search(model, src, mask, limits)
            else:
                beam_search(model, src, mask, limits, beam=beam)
        synchronize(device)

    return each_batch(decode, batches, inter)


def random_decoder(preset: str, precision: str, device: torch.device = CPU) -> NoEos:
    """mt's `preset` model on random weights (seed 0, VOCAB pieces) on `device`, laid out for
    decoding in `precision` as `mt translate` lays it out, with end-of-sentence suppressed."""
    torch.manual_seed(0)
    cfg = model_preset(preset)
    model = transformer(**vars(cfg), src_vocab_size=VOCAB, tgt_vocab_size=VOCAB).eval()
    return NoEos(for_decoding(model.to(device), precision, device))
