"""Math answers checked with math-verify, under a timeout that works from any thread.

math-verify's own timeouts use SIGALRM, which only works on the main thread; training loops and reward
functions often run elsewhere. So comparisons run in a persistent worker process: the caller waits on a
pipe with a deadline and, if sympy hangs, kills the worker (answer counted wrong) and starts a new one.
The worker is a fresh interpreter (`python -m sdzero.verifiers._math_worker`), not a multiprocessing child: spawn
would re-run the caller's script, so a script without an `if __name__ == "__main__":` guard would crash.
Plain integers on both sides are compared directly, which is what math-verify would conclude, and spares
the round trip for most GSM8K-style answers.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import threading
from functools import lru_cache
from multiprocessing.connection import Connection

from sdzero.errors import SDZeroError
from sdzero.verifiers.answers import UNICODE_MINUS

_INT_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+|-?\d+")


def _plain_int(s: str) -> int | None:
    s = s.strip().rstrip(".")
    return int(s.replace(",", "")) if _INT_RE.fullmatch(s) else None


def _parse_both(text: str) -> list:
    """math-verify parses of the text as is and wrapped in $...$ (LaTeX); either may be the right reading."""
    from math_verify import parse

    parsed = []
    for variant in (text, text if "$" in text else f"${text}$"):
        try:
            p = parse(variant, parsing_timeout=None)
        except Exception:
            p = []
        if p:
            parsed.append(p)
    return parsed


def _compare(candidate: str, gold: str) -> bool:
    from math_verify import verify

    golds = _parse_both(gold)
    for pred in _parse_both(candidate):
        for g in golds:
            try:
                if verify(g, pred, timeout_seconds=None):
                    return True
            except Exception:
                continue
    return False


def _worker(rx: Connection, tx: Connection) -> None:  # runs in the worker process
    path, compare = rx.recv()[0], None
    sys.path[:] = path  # the caller's, so that its compare function can be imported by name
    compare = pickle.loads(rx.recv_bytes())
    while True:
        try:
            msg = rx.recv()
        except EOFError:
            return
        if msg is None:
            return
        tx.send(compare(*msg))


class MathVerifier:
    """`verifier(candidate, gold) -> bool`, thread-safe, each comparison bounded by `timeout_s`."""

    def __init__(self, timeout_s: float = 5.0, compare=_compare):
        self.timeout_s = timeout_s
        self.compare = compare  # (candidate, gold) -> bool, a module-level function (pickled by name)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None  # answers from the worker
        self._send: Connection | None = None  # questions to it
        self._fresh = True
        self.timeouts = 0  # comparisons that hit the deadline (counted wrong)
        self._cached = lru_cache(maxsize=65536)(self._compare_in_worker)

    def _start(self) -> None:
        self.close()  # a worker that died: its process and pipes go first
        q_read, q_write = os.pipe()  # questions: we write, the worker reads
        a_read, a_write = os.pipe()  # answers: the worker writes, we read
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                                         os.environ.get("PYTHONPATH")]))}
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "sdzero.verifiers._math_worker", str(q_read),
                                           str(a_write)], pass_fds=(q_read, a_write), env=env,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except BaseException:
            for fd in (q_write, a_read):
                os.close(fd)
            raise
        finally:
            os.close(q_read)
            os.close(a_write)
        self._conn = Connection(a_read, writable=False)
        self._send = Connection(q_write, readable=False)
        self._send.send((list(sys.path),))
        self._send.send_bytes(pickle.dumps(self.compare))
        self._fresh = True  # its first answer also pays for starting Python and importing sympy (a few seconds)

    def _compare_in_worker(self, candidate: str, gold: str) -> bool:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            try:
                self._send.send((candidate, gold))
                if self._conn.poll(self.timeout_s + (15.0 if self._fresh else 0.0)):
                    self._fresh = False
                    return bool(self._conn.recv())
            except (EOFError, BrokenPipeError) as e:
                self.close()
                raise SDZeroError("the math verifier's worker process stopped (see its error above); a custom "
                                  "compare function must be importable by name, not defined in the script that "
                                  "runs") from e
            self.timeouts += 1
            self.close()
            return False

    def __call__(self, candidate: str | None, gold: str) -> bool:
        if candidate is None or not candidate.strip():
            return False
        candidate = candidate.translate(UNICODE_MINUS).strip()
        gold = gold.translate(UNICODE_MINUS).strip()
        a, b = _plain_int(candidate), _plain_int(gold)
        if a is not None and b is not None:
            return a == b
        return self._cached(candidate, gold)

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for conn in (self._conn, self._send):
            if conn is not None:
                conn.close()
        self._proc = self._conn = self._send = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
