"""Math answers checked with math-verify, under a timeout that works from any thread.

math-verify's own timeouts use SIGALRM, which only works on the main thread; training loops and reward
functions often run elsewhere. So comparisons run in a persistent worker process: the caller waits on a
pipe with a deadline and, if sympy hangs, kills the worker (answer counted wrong) and starts a new one.
Plain integers on both sides are compared directly, which is what math-verify would conclude, and spares
the round trip for most GSM8K-style answers.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import threading
from functools import lru_cache

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


def _worker(conn, compare) -> None:  # runs in the child process
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        conn.send(compare(*msg))


class MathVerifier:
    """`verifier(candidate, gold) -> bool`, thread-safe, each comparison bounded by `timeout_s`."""

    def __init__(self, timeout_s: float = 5.0, compare=_compare):
        self.timeout_s = timeout_s
        self.compare = compare  # (candidate, gold) -> bool, a module-level function (it is pickled)
        self._lock = threading.Lock()
        self._proc = None
        self._conn = None
        self._fresh = True
        self.timeouts = 0  # comparisons that hit the deadline (counted wrong)
        self._cached = lru_cache(maxsize=65536)(self._compare_in_worker)

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # fork would copy torch's thread pools; spawn is safe everywhere
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker, args=(child, self.compare), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        self._fresh = True  # its first answer also pays for importing sympy (a second or two)

    def _compare_in_worker(self, candidate: str, gold: str) -> bool:
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._start()
            self._conn.send((candidate, gold))
            if self._conn.poll(self.timeout_s + (15.0 if self._fresh else 0.0)):
                self._fresh = False
                return bool(self._conn.recv())
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
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
