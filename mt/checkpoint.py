"""Checkpoints: atomic save, safe load (weights_only, never runs code), pruning, averaging.

A checkpoint is one dict of tensors and plain values: the model and optimizer states, the
schedule, the loss scaler, the RNG state, the position in the data, and the resolved config,
so translation rebuilds the model without the YAML.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from mt.errors import MTError
from mt.files import TEMP_MARK, fault, publish_file, temp_path, write_bytes_with

FORMAT = "mt-checkpoint/1"
STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, rename.

    A crash at any moment leaves either the previous file or the new one, never a partial one.

    Raises:
        FileFault: the write failed (a full disk, a read-only folder, torch's serializer); the
            temp file is gone and `path` holds what it held before.
    """
    write_bytes_with(path, lambda f: torch.save(state, f))


def link_checkpoint(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src` (hard link, else copy), atomically replacing `dst`."""
    if dst.exists() and os.path.samefile(src, dst):
        # already linked; and POSIX rename() of two links to one file is a no-op that would
        # leave the temp link behind
        return
    tmp = temp_path(dst)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(src, tmp)
        publish_file(tmp, dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise fault(exc, dst, f"{dst} is unchanged") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU without executing code from the file.

    Raises:
        MTError: the file is missing, truncated, not a checkpoint, or not an mt checkpoint.
    """
    if not path.is_file():
        raise MTError(f"checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, random bytes ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MTError(f"{path} is not a readable checkpoint ({first[:200]}).") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise MTError(f"{path} is not an mt checkpoint.")
    return state


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temp files of writes that a killed process never finished; returns them.

    Only safe while holding the run's lock: no other process is writing to `folder` then.
    """
    stale = sorted(folder.glob(f".*.pt{TEMP_MARK}*"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def step_checkpoints(folder: Path) -> list[Path]:
    """step_<N>.pt files of a folder, oldest step first."""
    found = [
        (int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := STEP_FILE.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints."""
    for path in step_checkpoints(folder)[:-keep] if keep > 0 else step_checkpoints(folder):
        path.unlink(missing_ok=True)


def average_checkpoints(paths: list[Path]) -> dict[str, Any]:
    """A checkpoint whose model weights are the mean of the given checkpoints' weights.

    The other fields (config, vocabulary, step) come from the newest one; optimizer state is
    dropped, since an average is for decoding, not for resuming.
    """
    if not paths:
        raise MTError("no checkpoints to average.")
    states = [load_checkpoint(p) for p in paths]
    keys = states[-1]["model"].keys()
    for path, state in zip(paths, states, strict=True):
        if state["model"].keys() != keys:
            raise MTError(f"{path} has other parameters than {paths[-1]}; cannot average them.")
    averaged = {}
    for key in keys:
        tensors = [s["model"][key] for s in states]
        if tensors[0].is_floating_point():
            averaged[key] = torch.stack([t.float() for t in tensors]).mean(0).to(tensors[0].dtype)
        else:
            averaged[key] = tensors[-1]
    newest = states[-1]
    return {
        **{k: v for k, v in newest.items() if k not in ("optimizer", "scheduler", "scaler", "rng")},
        "model": averaged,
        "averaged_from": [p.name for p in paths],
    }
