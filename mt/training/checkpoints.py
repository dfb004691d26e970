"""A training run's checkpoints in its run folder: write one step (`step_<N>.pt`, with `last.pt`
and `best.pt` pointing at it, old steps pruned) and average the last steps into `averaged.pt`.

The file primitives (atomic save, links, pruning, averaging) are `mt.checkpoint`'s; the names
are `mt.rundir`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mt.checkpoint import (
    average_checkpoints,
    link_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from mt.errors import FileFault, MTError
from mt.rundir import RunDir

log = logging.getLogger("mt.train")


def save_step(run: RunDir, payload: dict[str, Any], step: int, is_best: bool, keep: int) -> None:
    """Write `payload` as step_<step>.pt, point last.pt (and best.pt) at it, keep the newest
    `keep` step checkpoints.

    Raises:
        MTError: the checkpoint cannot be written (disk full, quota, read-only); last.pt still
            holds the previous one.
    """
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    path = run.step(step)
    try:
        save_checkpoint(payload, path)
        link_checkpoint(path, run.last)
        if is_best:
            link_checkpoint(path, run.best)
    except (OSError, FileFault) as exc:  # disk full, quota, read-only, torch's writer ...
        cause = (
            str(exc).rstrip(".")  # already one sentence naming the file and the reason
            if isinstance(exc, FileFault)
            else f"cannot write checkpoint {path} ({exc.strerror or exc})"
        )
        raise MTError(
            f"{cause}; training stopped at step {step}, and {run.last} still "
            "holds the previous one."
        ) from None
    prune_checkpoints(run.checkpoints, keep)


def average_last(run: RunDir, n: int) -> Path | None:
    """Average the last `n` step checkpoints into averaged.pt; None if fewer than 2 exist."""
    steps = run.steps()[-n:]
    if len(steps) < 2:
        return None
    out = run.averaged
    save_checkpoint(average_checkpoints(steps), out)
    log.info("averaged %s into %s", ", ".join(p.name for p in steps), out)
    return out
