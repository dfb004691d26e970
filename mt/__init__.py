"""mt: a machine-translation training toolkit (prepare, train, translate, eval)."""

__version__ = "0.1.0"
