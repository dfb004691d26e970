"""MTError: an expected mistake of the user (bad input, bad path), reported as one sentence."""


class MTError(Exception):
    """Raised for bad input; the CLI prints the message and exits with status 2, no traceback."""
