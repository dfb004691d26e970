"""Logging set-up (console + train.log) and the TensorBoard writer; the only importer of
SummaryWriter."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger("mt")


def setup_logging(log_file: Path | None = None, is_main: bool = True) -> None:
    """INFO to stderr on the main rank (warnings elsewhere) and, if given, to `log_file`."""
    root = logging.getLogger("mt")
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(console)
    if log_file is not None and is_main:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(file_handler)


class Tracker:
    """Scalars to TensorBoard (main rank only); a no-op elsewhere."""

    def __init__(self, log_dir: Path | None) -> None:
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
