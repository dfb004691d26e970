"""MTError: an expected mistake of the user (bad input, bad path), reported as one sentence."""


class MTError(Exception):
    """Raised for bad input; the CLI prints the message and exits with status 2, no traceback."""


class Stopped(Exception):
    """A run stopped early on purpose (SIGTERM, Ctrl-C) after saving its state."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
