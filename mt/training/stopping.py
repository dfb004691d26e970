"""Stop requests in `mt train`: the SIGTERM / Ctrl-C handlers, the exception that cuts an
evaluation short between two batches, and the `Stopped` error that ends a stopped run.

A signal only asks: the trainer checkpoints after the current step or validation batch, and
the end-of-run phases stop between batches, so a re-run of the same command goes on.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

from mt.errors import Stopped


class EvaluationStopped(Exception):
    """An evaluation cut short between two batches by a stop request (SIGTERM, Ctrl-C).

    Never reaches the CLI: the trainer checkpoints and stops, run_train raises Stopped.
    """

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"evaluation stopped by {signal_name}")
        self.signal_name = signal_name


def signal_number(signal_name: str) -> int:
    """The number of the signal named `signal_name` ("SIGTERM"); 0 for "" (no signal)."""
    return signal.Signals[signal_name].value if signal_name else 0


@contextlib.contextmanager
def graceful_stop(request_stop: Callable[[str], None]) -> Iterator[None]:
    """SIGTERM / first Ctrl-C call `request_stop` with the signal's name (the trainer then
    checkpoints and stops, and the end-of-run scoring stops between batches); a second
    Ctrl-C aborts. The previous handlers are restored on exit."""

    def handler(signum: int, _frame: object) -> None:
        request_stop(signal.Signals(signum).name)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stopped(signal_name: str, what: str) -> Stopped:
    """The exception that ends a run stopped by `signal_name`: exit status 128 + its number
    (143 for SIGTERM, 130 for Ctrl-C), and `what` happened, saying how to go on."""
    return Stopped(f"stopped by {signal_name} {what}", 128 + signal_number(signal_name))


@contextlib.contextmanager
def stoppable(requested: str, phase: str) -> Iterator[None]:
    """Run an end-of-run phase (rank 0 alone) that a stop request ends: one already made
    when it starts (`requested`, a signal name or ""), or one that cut its evaluation short
    between two batches.

    Raises:
        Stopped: either way, saying that a re-run finishes the phase.
    """
    finish = "checkpoints are saved, run the same command again to finish."
    if requested:
        raise stopped(requested, f"before {phase}; {finish}")
    try:
        yield
    except EvaluationStopped as exc:
        raise stopped(exc.signal_name, f"during {phase}; {finish}") from None
