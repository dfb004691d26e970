"""Logging set-up (console + train.log), the TensorBoard writer and the training progress bar;
the only importer of SummaryWriter and tqdm."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

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


class Progress:
    """A progress bar over training steps: steps/s, ETA to max_steps, loss and tokens/s.

    Args:
        total: The step the run stops at (None when only a time or epoch limit is set).
        initial: The step training starts from (a resumed run's step).
        show: True or False to force; None shows it only when the output is a terminal, so
            logs of batch jobs and CI hold no bar redraws.
        file: Where to draw (stderr by default).
    """

    def __init__(
        self, total: int | None, initial: int, show: bool | None = None, file: IO[str] | None = None
    ) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="step",
            dynamic_ncols=True,
            leave=False,
            file=file,
            disable=None if show is None else not show,
        )

    def step(self, loss: float, tokens_per_s: float) -> None:
        self.bar.set_postfix_str(f"loss {loss:.3f}, {tokens_per_s:,.0f} tgt tok/s", refresh=False)
        self.bar.update(1)

    @contextlib.contextmanager
    def active(self) -> Iterator[Progress]:
        """Route the `mt` console log through the bar while it is drawn, then close it."""
        from tqdm.contrib.logging import logging_redirect_tqdm

        try:
            with logging_redirect_tqdm(loggers=[logging.getLogger("mt")]):
                yield self
        finally:
            self.bar.close()
