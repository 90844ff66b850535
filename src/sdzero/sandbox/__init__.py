"""Running untrusted programs (model-written code) safely.

Every program runs through `_launcher.py` (see its docstring for the exact steps):
- its own PID namespace: when the program ends or is killed, everything it spawned dies with it;
- no network: a fresh network namespace with no interfaces;
- a root filesystem built from an allowlist: the system directories read-only, size-capped private tmpfs
  on /tmp and /dev/shm as the only writable places, a fresh /proc that shows only the sandbox's own
  processes; nothing else of the host (the checkout, /home, ...) exists inside;
- an unprivileged uid of its own (one per concurrent run, none shared with anything else), no groups;
- limits on CPU time, wall time, address space, processes, file size (stdout/stderr included) and open
  files; a scrubbed environment.
Where the kernel refuses namespaces (not root, locked-down container), the launcher falls back to a
private directory, rlimits, the uid drop when possible and cleanup by uid, and `isolation()` says so: the
network is then NOT blocked.

`Sandbox.run` returns a `RunResult`; `judge` turns it into pass / fail / timeout / error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

LAUNCHER = Path(__file__).with_name("_launcher.py")
UID_BASE, UID_COUNT = 61000, 512  # uids no account uses: each concurrent run gets one to itself

Status = Literal["pass", "fail", "timeout", "error"]


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # killed after this much real time
    cpu_s: int = 5  # CPU seconds, all threads together
    memory_mb: int = 512  # address space
    processes: int = 32  # processes/threads the sandbox uid may have
    file_mb: int = 16  # largest file it may write (its stdout and stderr too)
    open_files: int = 64
    disk_mb: int = 64  # size of its private tmpfs
    max_output_kb: int = 1024  # stdout kept for comparison


@dataclass
class RunResult:
    exit_code: int | None
    signal: int | None
    timed_out: bool
    wall_s: float
    stdout: str
    stderr_tail: str
    reason: str = ""  # why it ended when not a clean exit: "wall time limit", "killed by SIGSEGV", ...
    isolation: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class _UidPool:
    def __init__(self) -> None:
        self._free = list(range(UID_BASE, UID_BASE + UID_COUNT))
        self._cond = threading.Condition()

    def acquire(self) -> int:
        with self._cond:
            while not self._free:
                self._cond.wait()
            return self._free.pop(0)

    def release(self, uid: int) -> None:
        with self._cond:
            self._free.append(uid)
            self._cond.notify()


_UIDS = _UidPool()


def processes_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry))
                        break
        except (OSError, ValueError):
            continue
    return pids


def kill_uid(uid: int, rounds: int = 100) -> None:
    """SIGKILL every process of `uid` until none is left (a fork bomb may still be forking)."""
    for _ in range(rounds):
        pids = processes_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def default_python() -> str:
    """An interpreter an unprivileged uid can execute (a venv under /root is not one)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return os.path.realpath(sys.executable)


def _install_prefix(exe: str) -> str:
    """What must be visible for `exe` to run when it is not a system binary: its install prefix
    (/opt/python3.11 for /opt/python3.11/bin/python3), so its libraries come along."""
    folder = Path(os.path.realpath(exe)).parent
    return str(folder.parent if folder.name == "bin" else folder)


class Sandbox:
    def __init__(self, limits: Limits = Limits(), python: str | None = None, use_namespaces: bool = True):
        self.limits = limits
        self.python = python or default_python()
        self.is_root = os.geteuid() == 0
        self.use_namespaces = use_namespaces and self.is_root
        self._isolation: dict[str, Any] | None = None

    def isolation(self) -> dict[str, Any]:
        """What the kernel allowed, probed once: namespaces, network, filesystem, process cleanup."""
        if self._isolation is None:
            result = self.run([self.python, "-c", "pass"], probe=True)
            if self.use_namespaces and not result.isolation.get("namespaces"):
                self.use_namespaces = False  # refused here: use the fallback from now on
                result = self.run([self.python, "-c", "pass"], probe=True)
            self._isolation = {**result.isolation, "uid_drop": self.is_root}
        return self._isolation

    def run_python(self, source: str, stdin: str = "", limits: Limits | None = None) -> RunResult:
        return self.run([self.python, "-I", "-B", "main.py"], {"main.py": source}, stdin, limits)

    def run(self, argv: Sequence[str], files: dict[str, str] | None = None, stdin: str = "",
            limits: Limits | None = None, probe: bool = False) -> RunResult:
        if not probe:
            self.isolation()
        lim = limits or self.limits
        uid = _UIDS.acquire()
        rundir = Path(tempfile.mkdtemp(prefix="sdzero-sbx-"))
        fds: list[int] = []
        try:
            os.chmod(rundir, 0o711)  # the fallback's work dir lives inside; nobody may list it
            workdir = "/tmp/sandbox" if self.use_namespaces else str(rundir / "work")
            if not self.use_namespaces:
                os.makedirs(workdir)
            (rundir / "stdin").write_text(stdin)
            stdin_fd = os.open(rundir / "stdin", os.O_RDONLY)
            out_fd = os.open(rundir / "stdout", os.O_WRONLY | os.O_CREAT, 0o600)
            err_fd = os.open(rundir / "stderr", os.O_WRONLY | os.O_CREAT, 0o600)
            status_fd = os.open(rundir / "status", os.O_WRONLY | os.O_CREAT, 0o600)
            fds = [stdin_fd, out_fd, err_fd, status_fd]
            exe = argv[0]
            spec = {
                "argv": list(argv), "files": files or {}, "workdir": workdir, "uid": uid, "gid": uid,
                "use_namespaces": self.use_namespaces, "disk_bytes": lim.disk_mb << 20,
                "keep_visible": [_install_prefix(exe)],
                "stdin_fd": stdin_fd, "stdout_fd": out_fd, "stderr_fd": err_fd, "status_fd": status_fd,
                "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
                        "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"},
                "limits": {"cpu_s": lim.cpu_s, "memory_bytes": lim.memory_mb << 20, "processes": lim.processes,
                           "file_bytes": lim.file_mb << 20, "open_files": lim.open_files},
            }
            (rundir / "spec.json").write_text(json.dumps(spec))
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-I", str(LAUNCHER), str(rundir / "spec.json")],
                                    env={"PATH": "/usr/bin:/bin"},  # the host's environment stays out
                                    pass_fds=fds, start_new_session=True, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err_fd)
            timed_out = False
            try:
                proc.wait(timeout=lim.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the reaper: the namespace goes too
                except ProcessLookupError:
                    pass
                proc.wait()
            wall = time.perf_counter() - t0
            if self.is_root:
                kill_uid(uid)  # whatever escaped (the fallback has no PID namespace)
            for fd in fds:
                os.close(fd)
            fds = []
            return self._result(rundir, lim, timed_out, wall)
        finally:
            for fd in fds:
                os.close(fd)
            shutil.rmtree(rundir, ignore_errors=True)
            _UIDS.release(uid)

    def _result(self, rundir: Path, lim: Limits, timed_out: bool, wall: float) -> RunResult:
        try:
            status = json.loads((rundir / "status").read_text() or "{}")
        except json.JSONDecodeError:
            status = {}
        with open(rundir / "stdout", "rb") as f:
            stdout = f.read(lim.max_output_kb << 10).decode("utf-8", "replace")
        err = (rundir / "stderr").read_bytes()[-4000:].decode("utf-8", "replace")
        code, sig = status.get("exit"), status.get("signal")
        reason = ""
        if timed_out:
            reason = "wall time limit"
        elif "setup_error" in status:
            reason = f"sandbox setup failed: {status['setup_error']}"
        elif sig is not None:
            known = {signal.SIGXCPU: "cpu time limit", signal.SIGXFSZ: "file size limit (output or file too big)",
                     signal.SIGKILL: "killed (cpu hard limit or out of memory)"}
            reason = known.get(sig, f"killed by {_signal_name(sig)}")
            timed_out = sig == signal.SIGXCPU or (sig == signal.SIGKILL and wall >= lim.cpu_s)
        elif code is None:
            reason = "no status from the sandbox"
        elif code != 0:
            reason = f"exit code {code}"
            if "MemoryError" in err:
                reason += " (memory limit)"
        return RunResult(code, sig, timed_out, round(wall, 4), stdout, err[-2000:], reason,
                         status.get("isolation", {}))


def judge(result: RunResult, expected_stdout: str | None = None) -> Status:
    """pass: clean exit (and the expected output, whitespace-normalised, when one is given);
    timeout: wall or CPU limit; fail: ran but wrong (assertion or output mismatch); error: anything else."""
    if result.timed_out:
        return "timeout"
    if result.exit_code == 0:
        if expected_stdout is None or result.stdout.split() == expected_stdout.split():
            return "pass"
        return "fail"
    if result.exit_code is not None and "AssertionError" in result.stderr_tail:
        return "fail"
    return "error"


@dataclass
class Job:
    argv: list[str] | None = None  # default: python main.py
    files: dict[str, str] = field(default_factory=dict)
    stdin: str = ""
    expected_stdout: str | None = None


@dataclass
class Verdict:
    status: Status
    reason: str
    stderr_tail: str
    wall_s: float


class SandboxPool:
    """Runs many jobs, at most `workers` at a time, each in its own sandbox run."""

    def __init__(self, workers: int = 4, limits: Limits = Limits(), python: str | None = None,
                 use_namespaces: bool = True):
        self.sandbox = Sandbox(limits, python, use_namespaces)
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox")

    def _one(self, job: Job) -> Verdict:
        argv = job.argv or [self.sandbox.python, "-I", "-B", "main.py"]
        r = self.sandbox.run(argv, job.files, job.stdin)
        return Verdict(judge(r, job.expected_stdout), r.reason, r.stderr_tail[-1000:], r.wall_s)

    def map(self, jobs: Iterable[Job]) -> list[Verdict]:
        self.sandbox.isolation()
        return list(self._executor.map(self._one, jobs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
