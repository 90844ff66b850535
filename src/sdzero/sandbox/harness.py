"""Test harness for function-style code tasks (HumanEval, MBPP), run inside the sandbox; stdlib only.

A code reward is a training signal, and a policy under RL learns whatever passes. An exit code is not a
verdict: `os._exit(0)` after a wrong function, an `atexit` or `sys.excepthook` that exits 0, `exit(256)`
all end a process "cleanly". So the harness, copied into the sandbox beside the candidate's code:

1. opens `verdict.key` (a random token the host made for this run) and unlinks it, reads and unlinks the
   solution and the tests, and binds every function it will call later (exec, the value checks, os.pread,
   os.write, os._exit) to closure variables, all before any candidate code runs: rebinding
   `builtins.exec` or a name in this module afterwards changes nothing the harness uses;
2. runs the candidate's code in its own namespace (`__name__` is "solution", so a `__main__` block of
   its own does not run), with the real builtins;
3. runs the tests in a second namespace whose builtins are a copy taken before the candidate ran (a
   candidate that rebinds `builtins.abs` or `builtins.all` does not change what the tests call), and
   where everything callable the candidate defined (functions, cached functions, callable objects; not
   classes) is wrapped so that the tests see only *plain* values: what it returns is rebuilt from exact
   builtin types (int, float, str, bytes, None, list, tuple, dict, set, ...; a subclass becomes its base
   type, an iterator yields rebuilt items, C-implemented scalars such as numpy's pass as they are), so no
   `__eq__`, `__abs__` or `__lt__` of the candidate's own runs inside a test's comparison;
4. only when every test ran to the end, writes the key as the last line of stdout and leaves with
   `os._exit(0)`, so no `atexit` handler of the candidate runs after it.

The host passes a run only when the exit code is 0 *and* the last stdout line is the key.
What this does not stop: code written against this harness that reads the key from the harness's own
open file or frames (the candidate runs in the same process, so nothing in it is out of reach of a
deliberate exploit of sdzero's code; no reward hack found so far needs less). The sandbox, not the
harness, is the security boundary.
"""

import builtins
import collections
import decimal
import fractions
import os

KEY_FILE, SOLUTION_FILE, TESTS_FILE = "verdict.key", "solution.py", "tests.py"


def make_plain_converter():
    """`plain(value)`: the value rebuilt from exact builtin types, or TypeError. Every name it uses is bound
    here, before the candidate runs."""
    _type, _issubclass, _hasattr, _callable = type, issubclass, hasattr, callable
    _TypeError, _dict_items, _tuple_iter, _list_iter = TypeError, dict.items, tuple.__iter__, list.__iter__
    _int_add, _float_add, _complex_add, _bytes_add = int.__add__, float.__add__, complex.__add__, bytes.__add__
    _str_str, _set_iter, _frozenset_iter = str.__str__, set.__iter__, frozenset.__iter__
    _dict, _list, _tuple, _set, _frozenset, _bytearray = dict, list, tuple, set, frozenset, bytearray
    Counter, OrderedDict, deque = collections.Counter, collections.OrderedDict, collections.deque
    counter_eq, ordered_eq, fraction_eq = Counter.__eq__, OrderedDict.__eq__, fractions.Fraction.__eq__
    as_is = (bool, int, float, complex, str, bytes, type(None), range, decimal.Decimal)
    views = (type({}.keys()), type({}.items()))
    values_view = type({}.values())
    heap_type = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by Python code (the candidate can make these)
    max_depth = 100

    def plain(value, depth=0):
        kind = _type(value)
        if depth > max_depth:
            raise _TypeError("the returned value is nested too deeply")
        if kind in as_is:
            return value
        if kind is _bytearray:
            return _bytes_add(b"", value)
        if kind is fractions.Fraction and kind.__eq__ is fraction_eq:
            return value
        if kind is Counter and kind.__eq__ is counter_eq:
            return Counter({plain(k, depth + 1): plain(v, depth + 1) for k, v in _dict_items(value)})
        if kind is OrderedDict and kind.__eq__ is ordered_eq:
            return OrderedDict([(plain(k, depth + 1), plain(v, depth + 1)) for k, v in _dict_items(value)])
        if kind is deque:
            return deque([plain(v, depth + 1) for v in _list(value)], value.maxlen)
        if _issubclass(kind, int):
            return _int_add(value, 0)  # the base type's own arithmetic: an exact int
        if _issubclass(kind, float):
            return _float_add(value, 0.0)
        if _issubclass(kind, complex):
            return _complex_add(value, 0j)
        if _issubclass(kind, str):
            return _str_str(value)
        if _issubclass(kind, bytes):
            return _bytes_add(value, b"")
        if _issubclass(kind, _tuple):
            return _tuple([plain(v, depth + 1) for v in _tuple_iter(value)])
        if _issubclass(kind, _list):
            return [plain(v, depth + 1) for v in _list_iter(value)]
        if _issubclass(kind, _dict):
            return {plain(k, depth + 1): plain(v, depth + 1) for k, v in _dict_items(value)}
        if _issubclass(kind, _set):
            return {plain(v, depth + 1) for v in _set_iter(value)}
        if _issubclass(kind, _frozenset):
            return _frozenset(plain(v, depth + 1) for v in _frozenset_iter(value))
        if kind in views:
            return {plain(v, depth + 1) for v in value}
        if kind is values_view:
            return [plain(v, depth + 1) for v in value]
        if _hasattr(kind, "__next__"):  # generators, map, filter, zip, the candidate's own iterators
            return (plain(v, depth + 1) for v in value)
        if not kind.__flags__ & heap_type and not _hasattr(kind, "__iter__") and not _callable(value):
            return value  # a C-implemented scalar (numpy's float64, ...): its equality is not the candidate's
        raise _TypeError(f"returned a {kind.__name__}: the tests compare only plain values (numbers, strings, "
                         f"None, and lists/tuples/sets/dicts of them)")

    return plain


def make_guard(plain):
    _callable, _isinstance, _getattr = callable, isinstance, getattr

    def guard(name, value):
        if not _callable(value) or _isinstance(value, type):
            return value  # data and classes pass through; a class's instances go through its methods' returns

        def guarded(*args, **kwargs):
            return plain(value(*args, **kwargs))

        guarded.__name__ = guarded.__qualname__ = name
        guarded.__doc__ = _getattr(value, "__doc__", None)
        return guarded

    return guard


def main():
    read, unlink = open, os.unlink
    key_fd = os.open(KEY_FILE, os.O_RDONLY)
    unlink(KEY_FILE)
    with read(SOLUTION_FILE) as f:
        solution = compile(f.read(), SOLUTION_FILE, "exec")
    with read(TESTS_FILE) as f:
        tests = compile(f.read(), TESTS_FILE, "exec")
    unlink(SOLUTION_FILE)
    unlink(TESTS_FILE)  # the candidate cannot read the tests it will be judged by
    run, pread, write, leave, flush = exec, os.pread, os.write, os._exit, __import__("sys").stdout.flush
    guard = make_guard(make_plain_converter())
    trusted_builtins = dict(vars(builtins))
    candidate = {"__name__": "solution", "__builtins__": builtins}
    run(solution, candidate)
    checked = {"__name__": "tests", "__builtins__": trusted_builtins}
    for name, value in list(candidate.items()):
        if not name.startswith("__"):
            checked[name] = guard(name, value)
    run(tests, checked)
    key = pread(key_fd, 256, 0)  # read only now: every test has run and compared
    try:
        flush()
    except Exception:  # a stdout the candidate broke must not keep a right answer from passing
        pass
    write(1, b"\n" + key.strip() + b"\n")
    leave(0)


if __name__ == "__main__":
    main()
