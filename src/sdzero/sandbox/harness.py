"""Test harness for function-style code tasks (HumanEval, MBPP), run inside the sandbox; stdlib only.

A code reward is a training signal, and a policy under RL learns whatever passes. An exit code is not a
verdict: `os._exit(0)` after a wrong function, an `atexit` or `sys.excepthook` that exits 0, `exit(256)`
all end a process "cleanly". So the harness, copied into the sandbox beside the candidate's code:

1. opens `verdict.key` (a random token the host made for this run) and unlinks it before any candidate
   code runs; the token stays in the kernel's file, not in a Python object a frame walk could find;
2. runs the candidate's code in its own namespace (`__name__` is "solution", so a `__main__` block of
   its own does not run), with the real builtins;
3. runs the tests in a second namespace whose builtins are a copy taken before the candidate ran (a
   candidate that rebinds `builtins.abs` or `builtins.all` does not change what the tests call), and
   where every function the candidate defined is wrapped: its return value must be a plain value
   (numbers, strings, bytes, None and the standard containers of them, compared by the standard
   library's own equality), so an object whose `__eq__` always says True fails instead of passing;
4. only when every test ran to the end, writes the token as the last line of stdout and leaves with
   `os._exit(0)`, so no `atexit` handler of the candidate runs after it.

The host passes a run only when the exit code is 0 *and* the last stdout line is the token.
What this does not stop: a program written against this harness that reads its own process's open
files to find the token. That is an exploit of sdzero's code, not a reward hack a policy stumbles on;
it is stated here so nobody mistakes the harness for a security boundary (the sandbox is that).
"""

import builtins
import collections
import decimal
import fractions
import os
import sys
import types

KEY_FILE, SOLUTION_FILE, TESTS_FILE = "verdict.key", "solution.py", "tests.py"
MAX_DEPTH = 100

# Types whose equality the tests may trust, with their __eq__/__ne__ as they were before the candidate ran
# (a Python-level class such as Counter could be patched by the candidate; builtins cannot).
_TRUSTED = {t: (t.__eq__, t.__ne__) for t in (
    bool, int, float, complex, str, bytes, type(None), list, tuple, set, frozenset, dict,
    collections.Counter, collections.OrderedDict, collections.defaultdict, collections.deque,
    decimal.Decimal, fractions.Fraction)}
_CONTAINERS = (list, tuple, set, frozenset, collections.deque)
_TUPLE_EQ = (tuple.__eq__, tuple.__ne__)


def check_plain(value, name, depth=0):
    """Raise TypeError unless `value` is a plain value whose equality is the standard library's."""
    kind = type(value)
    trusted = _TRUSTED.get(kind)
    if trusted is None and issubclass(kind, tuple):  # namedtuples compare as tuples
        trusted = _TUPLE_EQ
    if trusted is None or (kind.__eq__, kind.__ne__) != trusted or depth > MAX_DEPTH:
        raise TypeError(f"{name} returned a {kind.__name__}: the tests compare only plain values (numbers, "
                        f"strings, None, and lists/tuples/sets/dicts of them)")
    if isinstance(value, dict):
        for k, v in dict.items(value):
            check_plain(k, name, depth + 1)
            check_plain(v, name, depth + 1)
    elif isinstance(value, _CONTAINERS):
        for v in value:
            check_plain(v, name, depth + 1)
    return value


def guard(function):
    name = getattr(function, "__name__", "the function")

    def guarded(*args, **kwargs):
        return check_plain(function(*args, **kwargs), name)

    guarded.__name__ = guarded.__qualname__ = name
    guarded.__doc__ = function.__doc__
    return guarded


def main():
    key_fd = os.open(KEY_FILE, os.O_RDONLY)
    os.unlink(KEY_FILE)
    trusted_builtins = dict(vars(builtins))
    with open(SOLUTION_FILE) as f:
        solution = f.read()
    with open(TESTS_FILE) as f:
        tests = f.read()
    candidate = {"__name__": "solution", "__builtins__": builtins}
    exec(compile(solution, SOLUTION_FILE, "exec"), candidate)
    checked = {"__name__": "tests", "__builtins__": trusted_builtins}
    for name, value in candidate.items():
        if not name.startswith("__"):
            checked[name] = guard(value) if isinstance(value, types.FunctionType) else value
    exec(compile(tests, TESTS_FILE, "exec"), checked)
    key = os.pread(key_fd, 256, 0)  # read only now: every test has run and compared
    sys.stdout.flush()
    os.write(1, b"\n" + key.strip() + b"\n")
    os._exit(0)


if __name__ == "__main__":
    main()
