"""Seeding, device choice, precision -> autocast context and GradScaler, distributed set-up."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

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


def init_distributed(device_name: str) -> Dist:
    """Join the process group when started by torchrun (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, local_rank, world)


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
