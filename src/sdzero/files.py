"""Writing files so that a crash never leaves a half-written one: temp file beside the target, then rename.

Temp files and dirs are created private (mkstemp: 0600, mkdtemp: 0700); what is renamed into place gets the
mode an ordinary `open()` / `mkdir` would give (0666 / 0777 less the umask), so teammates read results as
they read any other file of the user's. Output places are checked before any long work starts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from sdzero.errors import SDZeroError

T = TypeVar("T")


def _umask() -> int:
    try:  # Linux >= 4.7 reports it without changing it (os.umask would, briefly, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def user_file_mode() -> int:
    return 0o666 & ~_umask()


def user_dir_mode() -> int:
    return 0o777 & ~_umask()


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """A temp dir beside its final place, with the mode a plain mkdir gives (mkdtemp's is 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, user_dir_mode())
    return tmp


def replace_dir(target: str | Path, fill: Callable[[Path], T]) -> T:
    """`target` (a folder) replaced by what `fill(tmp)` writes into a temp dir beside it, renamed in once
    `fill` returned: the folder is complete or as it was. Returns what `fill` returned."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(target.parent, f".{target.name}-")
    try:
        result = fill(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_output_dir(path: str | Path, what: str = "--output_dir") -> Path:
    """Create `path` if needed and check a file can be written in it: one clear error now, not a traceback
    after the work is done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SDZeroError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sdzero-write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SDZeroError(f"{what} {path} cannot be written: {e.strerror or e}") from e
    return path


def check_output_file(path: str | Path, what: str = "--output") -> Path:
    """The file's folder is writable and the path is not a folder."""
    path = Path(path)
    if path.is_dir():
        raise SDZeroError(f"{what} {path} is a folder; give a file name")
    check_output_dir(path.parent, f"the folder of {what}")
    return path


def json_safe(obj: Any) -> Any:
    """NaN (e.g. a correction rate with no wrong drafts) becomes null: JSON has no NaN."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), user_file_mode())
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; a broken line is named by file and line number."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SDZeroError(f"{path}, line {number}: not valid JSON ({e.msg}, column {e.colno})") from e
    return rows
