"""Seeding, device choice, precision -> autocast context and GradScaler, distributed set-up."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from mt.errors import MTError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """auto -> cuda:<local rank> when CUDA is available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but CUDA is not available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pick_precision(name: str, device: torch.device) -> str:
    """Resolve a precision name for a device: auto -> bf16 where supported, else fp32.

    Raises:
        ValueError: For fp16 off CUDA, int8 off CPU, or bf16 on a CPU without native bf16
            matmuls (there PyTorch falls back to a slow reference kernel).
    """
    if name == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if name == "int8" and device.type != "cpu":
        raise ValueError("precision=int8 (dynamic int8 quantization) runs on CPU; use device=cpu")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if name == "bf16" and device.type == "cpu" and not bf16_supported(device):
        raise ValueError(
            "precision=bf16 needs a CPU with native bf16 matmuls (AVX512-BF16 or AMX); this one "
            "has none, so PyTorch would use its slow reference kernel: use fp32 or auto"
        )
    return name


def setup_hardware(
    device_name: str, precision_name: str, threads: int, local_rank: int = 0
) -> tuple[torch.device, str]:
    """Set the CPU thread count, then pick the device and resolve the precision for it.

    Raises:
        MTError: If the device or the precision is not available here (one sentence).
    """
    if threads:
        torch.set_num_threads(threads)
    try:
        device = pick_device(device_name, local_rank)
        return device, pick_precision(precision_name, device)
    except (RuntimeError, ValueError) as exc:
        raise MTError(str(exc)) from None


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed-precision context for forward passes; a no-op for fp32 and int8 (whose quantized
    layers run int8 kernels themselves, and everything else in fp32)."""
    if precision in ("fp32", "int8"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler that is active only for fp16."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


@dataclass
class Dist:
    """This process' place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# Setup (rank 0 preparing data or checking the run folder while the others wait at a barrier)
# may take as long as a corpus takes to prepare; only collectives after it are held to
# train.dist_timeout.
SETUP_TIMEOUT = timedelta(hours=24)


def init_distributed(device_name: str) -> Dist:
    """Join the process group when started by torchrun (NCCL on GPU, gloo on CPU).

    Collectives wait at most SETUP_TIMEOUT until `hold_to_timeout` shortens it. On NCCL a
    collective that times out raises in the waiting thread (TORCH_NCCL_BLOCKING_WAIT) instead
    of aborting the process, so `job_failure` can say what happened.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=SETUP_TIMEOUT)
    return Dist(rank, local_rank, world)


def hold_to_timeout(seconds: float) -> None:
    """From now on a collective that waits more than `seconds` raises on every waiting rank."""
    if dist.is_available() and dist.is_initialized():
        dist.distributed_c10d._set_pg_timeout(timedelta(seconds=seconds))


class Heartbeat:
    """Each rank's sign of life in the job's key-value store: a daemon thread writes the time
    and the last finished update once a second. A rank that died or was stopped (SIGSTOP)
    stops beating, which is how `job_failure` tells which rank a failed collective waited for.
    Without a process group it does nothing.
    """

    PERIOD_S = 1.0

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world, self.step = rank, world, 0
        self._store = _job_store() if world > 1 else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self._store is not None:
            self._thread = threading.Thread(target=self._beat, name="mt-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self._store.set(f"mt/alive/{self.rank}", f"{time.time()} {self.step}")
            except Exception:  # the store's host is gone: the job is ending anyway
                return
            self._stop.wait(self.PERIOD_S)

    def others(self) -> dict[int, tuple[float, int] | None]:
        """Seconds since each other rank last beat, and its last finished update (None:
        never beat, or the store cannot be read)."""
        found: dict[int, tuple[float, int] | None] = {}
        for rank in range(self.world):
            if rank == self.rank:
                continue
            found[rank] = None
            try:
                self._store.set_timeout(timedelta(seconds=2))
                stamp, step = self._store.get(f"mt/alive/{rank}").decode().split()
                found[rank] = (time.time() - float(stamp), int(step))
            except Exception:  # missing key, or the store's host died with its rank
                pass
        return found


def _job_store() -> dist.Store | None:
    """The key-value store the process group was set up with (torchrun's), if any."""
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # no default group, or a torch without the accessor
        return None


def collective_failed(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed: a peer's connection closed, or no peer
    answered within the process group's timeout."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return any(
        mark in text
        for mark in ("Gloo", "gloo", "NCCL", "Connection closed", "Connection reset", "Timed out")
    )


def _silence(rank: int, seen: tuple[float, int] | None) -> str:
    if seen is None:
        return f"rank {rank} never answered"
    return f"rank {rank} stopped answering {seen[0]:.0f} s ago, after update {seen[1]}"


def _silent_ranks(beat: Heartbeat) -> dict[int, tuple[float, int] | None]:
    """The other ranks that stopped beating. A peer that has just died may have beaten a
    moment ago, so without a stale one this waits a few beats and looks again."""
    stale = 3 * Heartbeat.PERIOD_S
    for attempt in range(2):
        others = beat.others()
        silent = {r: seen for r, seen in others.items() if seen is None or seen[0] > stale}
        if silent or attempt:
            return silent
        time.sleep(stale + Heartbeat.PERIOD_S)
    return {}


def job_failure(beat: Heartbeat, timeout_s: float, exc: BaseException) -> str:
    """One sentence on a failed collective: which rank stopped answering, and what to do."""
    silent = _silent_ranks(beat)
    if silent:
        what = "; ".join(_silence(rank, seen) for rank, seen in silent.items())
        what += " (the process died, was stopped, or its host went away)"
    elif "imed out" in str(exc):
        what = (
            f"no collective finished within train.dist_timeout={timeout_s:g} s though every "
            "rank is alive (one is stuck outside the collective, e.g. in I/O)"
        )
    else:
        what = f"a collective failed ({str(exc).strip().splitlines()[0][:200]})"
    return (
        f"rank {beat.rank} of {beat.world}: {what}; the job ends here. Run the same command "
        "again to resume from the last checkpoint."
    )


def _all_reduce(values: list[float], device: torch.device, op: dist.ReduceOp) -> list[float]:
    """Reduce floats element-wise over ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum floats over ranks (identity without a process group)."""
    return _all_reduce(values, device, dist.ReduceOp.SUM)


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """Element-wise maximum of floats over ranks (identity without a process group)."""
    return _all_reduce(values, device, dist.ReduceOp.MAX)
