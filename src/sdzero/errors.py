"""One exception type for bad input, so the CLI can print a single clear line instead of a traceback."""


class SDZeroError(Exception):
    """A problem with the user's input or configuration (missing column, empty dataset, unknown task...)."""
