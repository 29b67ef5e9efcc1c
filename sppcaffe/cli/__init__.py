"""Command-line tools (the scripts in tools/ are thin wrappers around these
modules' ``main`` functions)."""


class CliError(ValueError):
    """A user-facing error: printed without a traceback."""
