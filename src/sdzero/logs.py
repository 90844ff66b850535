"""sdzero's messages and progress bars.

- One logger, "sdzero": messages go to stdout (as `print` did) and, once a command knows its output folder,
  also to OUTPUT_DIR/sdzero.log with a time stamp (`log_file`).
- Progress bars redraw in place in a terminal. When stderr is not a terminal (a log file, CI, nohup) they
  would fill the file with carriage returns: there `progress` writes a plain line at most every 30 s and at
  the end, and transformers' own bars (loading weights, the Trainer's) are turned off; the Trainer then
  logs its loss lines instead.
- Third-party warnings that repeat on every call (a deprecation warned by each forward pass, the
  scheduler-before-optimizer notice of a run whose first step skipped its update) are shown once.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

LOGGER = logging.getLogger("sdzero")

# Warnings that a library raises on every call: shown once per process, not once per step.
REPEATING_WARNINGS = (r".*`past_key_values` is deprecated.*", r".*Detected call of `lr_scheduler.step\(\)`.*",
                      r".*`gradient_checkpointing_enable` is deprecated.*")


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (a test's captured stream, a redirected one)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _ensure_stdout_handler() -> None:
    if not any(isinstance(h, _CurrentStdout) for h in LOGGER.handlers):
        handler = _CurrentStdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
        LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False


def setup() -> None:
    """Called by the `sdzero` command once: the stdout handler, the repeating warnings shown once, and
    transformers' progress bars off when stderr is not a terminal."""
    _ensure_stdout_handler()
    for pattern in REPEATING_WARNINGS:
        warnings.filterwarnings("once", message=pattern)
    if not interactive():
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass


@contextmanager
def log_file(output_dir: str | Path) -> Iterator[Path]:
    """While inside: sdzero's messages also go to OUTPUT_DIR/sdzero.log (appended, time-stamped). Nested
    folders (a compare seed's run inside the compare folder) each get the messages of their part. Under
    `accelerate launch` only the main process writes the file."""
    path = (Path(output_dir) / "sdzero.log").resolve()
    if not _main_process() or any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path
                                  for h in LOGGER.handlers):
        yield path  # already logging there
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    LOGGER.addHandler(handler)
    try:
        yield path
    finally:
        LOGGER.removeHandler(handler)
        handler.close()


def _main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"  # set by `accelerate launch` / torchrun for each process


def info(message: str) -> None:
    """A message to stdout and the log file (library use without the command: stdout only)."""
    _ensure_stdout_handler()
    LOGGER.info(message)


def interactive() -> bool:
    """Whether progress bars can redraw in place (stderr is a terminal)."""
    return sys.stderr.isatty()


class _LineProgress:
    """tqdm's interface (update, set_postfix, close) writing a plain line at most every `every` seconds."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, every: float = 30.0):
        self.total, self.desc, self.unit, self.n, self.every = total, desc, unit, initial, every
        self.start = self.last = time.monotonic()
        self.postfix, self.written = "", initial

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every or (self.total is not None and self.n >= self.total):
            self.last = now
            self._write()

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def _write(self) -> None:
        self.written = self.n
        of = f"/{self.total}" if self.total is not None else ""
        rest = f" [{self.postfix}]" if self.postfix else ""
        print(f"{self.desc}: {self.n}{of} {self.unit} in {time.monotonic() - self.start:.0f} s{rest}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.n != self.written:  # where it stopped, unless the last line already said it
            self._write()


def progress(total: int | None, desc: str, unit: str = "it", disable: bool = False, initial: int = 0,
             leave: bool = True) -> Any:
    """A progress bar: tqdm in a terminal, plain lines every 30 s elsewhere, nothing when `disable`."""
    if interactive() or disable:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=disable, initial=initial, leave=leave)
    return _LineProgress(total, desc, unit, initial)
