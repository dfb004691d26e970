"""MTError: an expected mistake of the user (bad input, bad path), reported as one sentence."""


class MTError(Exception):
    """Raised for bad input; the CLI prints the message and exits with status 2, no traceback."""


class Stopped(Exception):
    """A run stopped early on purpose (SIGTERM, Ctrl-C) after saving its state."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class FileFault(MTError):
    """A file-system fault (full, read-only, missing, not a folder, no permission, or a writer's
    own error) while reading or writing `path`, as one sentence that says what still holds."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path
