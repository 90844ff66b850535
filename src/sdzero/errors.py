"""One exception type for bad input, so the CLI can print a single clear line instead of a traceback."""


class SDZeroError(Exception):
    """A problem with the user's input or configuration (missing column, empty dataset, unknown task...)."""


def require_at_least(cfg: object, minimum: int, *names: str) -> None:
    """One clear error for the first of `names` (settings of `cfg`) below `minimum`."""
    for name in names:
        if getattr(cfg, name) < minimum:
            bound = "0 or more" if minimum == 0 else f"at least {minimum}"
            raise SDZeroError(f"{name} must be {bound}, not {getattr(cfg, name)}")
