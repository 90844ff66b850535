"""Running untrusted programs (model-written code) safely.

Every program runs through `_launcher.py` (see its docstring for the exact steps):
- its own PID namespace: when the program ends or is killed, everything it spawned dies with it;
- no network: a fresh network namespace with no interfaces;
- a root filesystem built from an allowlist: the system directories read-only, size-capped private tmpfs
  on /tmp and /dev/shm as the only writable places, a fresh /proc that shows only the sandbox's own
  processes; nothing else of the host (the checkout, /home, ...) exists inside;
- an unprivileged uid of its own, leased through a lock file per uid, so no two runs on the machine share
  one, whichever process started them; no groups; no kernel-key syscalls (keys outlive processes, so a
  run could otherwise leave something for the next run of its uid);
- one budget for the whole job through cgroups (see cgroups.py): memory of all its processes with tmpfs
  and memfd pages (memory_mb + disk_mb), CPU seconds of the whole process tree (polled, then killed),
  process count, and an equal CPU share per job however many processes it starts;
- no new user namespaces (a seccomp filter), so no mounts of its own, and no syscalls of another ABI;
- per-process limits on CPU time, wall time, address space, processes, file size (stdout/stderr included)
  and open files; a scrubbed environment.
Where the kernel refuses namespaces or cgroups (not root, locked-down container), the launcher falls back
to a private directory, rlimits, the uid drop when possible and cleanup by uid, and `isolation()` says
what is not enforced: without namespaces the network is NOT blocked; without cgroups the budgets are per
process.

`Sandbox.run` returns a `RunResult` (with the real cause of a kill); `judge` turns it into pass / fail /
timeout / error, and never passes on an exit code alone (see harness.py for function tests).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from sdzero.sandbox import cgroups

LAUNCHER = Path(__file__).with_name("_launcher.py")
HARNESS = Path(__file__).with_name("harness.py")
UID_BASE, UID_COUNT = 61000, 512  # uids no account uses: each concurrent run gets one to itself

Status = Literal["pass", "fail", "timeout", "error"]


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # killed after this much real time
    cpu_s: int = 5  # CPU seconds of the whole job (all processes and threads), and of each process
    memory_mb: int = 512  # the job's memory (+ disk_mb for its tmpfs) where cgroups work; each process's address space
    processes: int = 32  # processes/threads of the job (the launcher and its reaper count too)
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
    stdout_end: str = ""  # the last bytes of stdout, however long it was (where the harness's key is)
    peak_memory_mb: float | None = None  # the whole job's peak (processes, tmpfs, memfd), where cgroups count it

    @property
    def ok(self) -> bool:
        """A clean exit. Not a verdict: `judge` also needs the expected output or the harness's key."""
        return self.exit_code == 0 and not self.timed_out


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class UidLease:
    """A uid no other sandbox run on this machine uses while held, in any process: one lock file per uid
    (flock, released by the kernel when the holder closes it or dies). Two accelerate ranks judging code at
    once used to start from the same uid, so one's cleanup killed the other's programs."""

    def __init__(self, uids: range):
        self.uids = uids
        self.folder = Path("/run/sdzero-sandbox" if os.geteuid() == 0 and os.path.isdir("/run") else
                           Path(tempfile.gettempdir()) / f"sdzero-sandbox-{os.geteuid()}")

    def acquire(self) -> tuple[int, int]:
        """(uid, lock fd); waits while every uid is taken."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        start = secrets.randbelow(len(self.uids))  # processes starting together try different uids first
        while True:
            for i in range(len(self.uids)):
                uid = self.uids[(start + i) % len(self.uids)]
                fd = os.open(self.folder / f"uid-{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return uid, fd
                except BlockingIOError:
                    os.close(fd)
            time.sleep(0.02)

    @staticmethod
    def release(fd: int) -> None:
        os.close(fd)


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
    cgroups.kill_until_none(lambda: processes_of_uid(uid), rounds)


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
    def __init__(self, limits: Limits = Limits(), python: str | None = None, use_namespaces: bool = True,
                 uids: range = range(UID_BASE, UID_BASE + UID_COUNT), use_cgroups: bool = True):
        self.limits = limits
        self.python = python or default_python()
        self.is_root = os.geteuid() == 0
        self.use_namespaces = use_namespaces and self.is_root
        self.use_cgroups = use_cgroups and self.is_root  # off: per-process limits only (for measurements)
        self.leases = UidLease(uids)
        self._isolation: dict[str, Any] | None = None

    def isolation(self) -> dict[str, Any]:
        """What the kernel allowed, probed once: namespaces, network, filesystem, process cleanup, the seccomp
        filter, which per-job budgets cgroups enforce (job_memory, job_processes, job_cpu_time,
        fair_cpu_share), and whether the harness's verdict key is out of the program's reach (uid drop)."""
        if self._isolation is None:
            result = self.run([self.python, "-c", "pass"], probe=True)
            if self.use_namespaces and not result.isolation.get("namespaces"):
                self.use_namespaces = False  # refused here: use the fallback from now on
                result = self.run([self.python, "-c", "pass"], probe=True)
            budgets = cgroups.probe(enforced=self.use_cgroups)
            # Without the uid drop the program runs as this user and can read the spec (its verdict key).
            self._isolation = {**result.isolation, "uid_drop": self.is_root, **budgets,
                               "verdict_key_private": self.is_root}
        return self._isolation

    def run_python(self, source: str, stdin: str = "", limits: Limits | None = None) -> RunResult:
        return self.run([self.python, "-I", "-B", "main.py"], {"main.py": source}, stdin, limits)

    def run(self, argv: Sequence[str], files: dict[str, str] | None = None, stdin: str = "",
            limits: Limits | None = None, probe: bool = False) -> RunResult:
        if not probe:
            self.isolation()
        lim = limits or self.limits
        fds: list[int] = []
        job, lease, uid, rundir = None, None, None, None
        try:
            uid, lease = self.leases.acquire()
            rundir = Path(tempfile.mkdtemp(prefix="sdzero-sbx-"))
            os.chmod(rundir, 0o711)  # the fallback's work dir lives inside; nobody may list it
            workdir = "/tmp/sandbox" if self.use_namespaces else str(rundir / "work")
            if not self.use_namespaces:
                os.makedirs(workdir)
            if self.use_cgroups:
                try:
                    job = cgroups.JobCgroup.create(f"uid-{uid}", (lim.memory_mb + lim.disk_mb) << 20, lim.processes)
                except OSError as e:  # one job's verdict, not the whole pool's crash
                    return RunResult(None, None, False, 0.0, "", "", f"sandbox setup failed: job cgroup: {e}")
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
                "keep_visible": [_install_prefix(exe)], "cgroup_procs": job.join_files() if job else [],
                "stdin_fd": stdin_fd, "stdout_fd": out_fd, "stderr_fd": err_fd, "status_fd": status_fd,
                "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
                        "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"},
                "limits": {"cpu_s": lim.cpu_s, "memory_bytes": lim.memory_mb << 20, "processes": lim.processes,
                           "file_bytes": lim.file_mb << 20, "open_files": lim.open_files},
            }
            spec_fd = os.open(rundir / "spec.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # holds the files
            with os.fdopen(spec_fd, "w") as f:
                json.dump(spec, f)
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-I", str(LAUNCHER), str(rundir / "spec.json")],
                                    env={"PATH": "/usr/bin:/bin"},  # the host's environment stays out
                                    pass_fds=fds, start_new_session=True, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err_fd)
            killed_for = self._watch(proc, job, lim, t0)
            wall = time.perf_counter() - t0
            if job is not None:
                job.kill_all()  # whatever escaped the PID namespace (the fallback has none)
            for fd in fds:
                os.close(fd)
            fds = []
            return self._result(rundir, lim, killed_for, wall, job)
        finally:  # also on errors: nothing of the run outlives its uid's lease
            for fd in fds:
                os.close(fd)
            if job is not None:
                job.remove()
            if self.is_root and uid is not None and job is None:
                kill_uid(uid)  # without a job cgroup (it holds every process of the run): a scan of /proc
            if rundir is not None:
                shutil.rmtree(rundir, ignore_errors=True)
            if lease is not None:
                self.leases.release(lease)

    @staticmethod
    def _watch(proc: subprocess.Popen, job: "cgroups.JobCgroup | None", lim: Limits, t0: float) -> str:
        """Wait for the launcher; kill the job on the wall-time limit or when its whole process tree has used
        more CPU than its budget. Returns what the sandbox killed it for ("" if nothing)."""
        tree_cpu = job is not None and job.cpu_seconds() is not None
        while True:
            left = lim.wall_s - (time.perf_counter() - t0)
            try:
                proc.wait(timeout=max(0.0, min(left, 0.05 if tree_cpu else left)))
                return ""
            except subprocess.TimeoutExpired:
                pass
            reason = ""
            if time.perf_counter() - t0 >= lim.wall_s:
                reason = "wall time limit"
            elif tree_cpu and (job.cpu_seconds() or 0.0) > lim.cpu_s:
                reason = "cpu time limit (all processes of the job)"
            if reason:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the reaper: the namespace goes too
                except ProcessLookupError:
                    pass
                if job is not None:
                    job.kill_all()
                proc.wait()
                return reason

    def _result(self, rundir: Path, lim: Limits, killed_for: str, wall: float,
                job: "cgroups.JobCgroup | None") -> RunResult:
        try:
            status = json.loads((rundir / "status").read_text() or "{}")
        except json.JSONDecodeError:
            status = {}
        with open(rundir / "stdout", "rb") as f:
            stdout = f.read(lim.max_output_kb << 10).decode("utf-8", "replace")
            f.seek(max(0, os.fstat(f.fileno()).st_size - 256))
            stdout_end = f.read().decode("utf-8", "replace")
        err = (rundir / "stderr").read_bytes()[-4000:].decode("utf-8", "replace")
        code, sig = status.get("exit"), status.get("signal")
        out_of_memory = job is not None and job.new_oom_kills() > 0
        peak = job.memory_peak() if job is not None else None
        peak = round(peak / 2**20, 1) if peak is not None else None
        reason, timed_out = "", False
        if killed_for:
            reason, timed_out = killed_for, True
        elif "setup_error" in status:
            reason = f"sandbox setup failed: {status['setup_error']}"
        elif sig is not None:
            over_cpu = status.get("cpu_s", 0) >= lim.cpu_s
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and over_cpu):
                reason, timed_out = "cpu time limit", True
            elif sig == signal.SIGKILL and out_of_memory:
                reason = "out of memory (the job's memory budget)"
            elif sig == signal.SIGXFSZ:
                reason = "file size limit (output or file too big)"
            else:  # a kill no limit of the sandbox explains: say so rather than guess
                reason = f"killed by {_signal_name(sig)}"
        elif code is None:
            reason = "no status from the sandbox" + (" (out of memory)" if out_of_memory else "")
        elif code != 0:
            reason = f"exit code {code}"
            if "MemoryError" in err or out_of_memory:
                reason += " (memory limit)"
        return RunResult(code, sig, timed_out, round(wall, 4), stdout, err[-2000:], reason,
                         status.get("isolation", {}), stdout_end, peak)


def judge(result: RunResult, expected_stdout: str | None = None, verdict_key: str | None = None) -> Status:
    """pass: a clean exit AND proof that the tests ran: the expected output (whitespace-normalised), or,
    for function tests run by `harness.py`, the run's verdict key as the last stdout line. An exit code
    alone is never a pass. timeout: wall or CPU limit; fail: ran but wrong (assertion, wrong output,
    no key after a clean exit); error: anything else."""
    if expected_stdout is None and verdict_key is None:
        raise ValueError("judge needs expected_stdout or verdict_key: an exit code alone is not a verdict")
    if result.timed_out:
        return "timeout"
    if result.exit_code == 0:
        if expected_stdout is not None and result.stdout.split() != expected_stdout.split():
            return "fail"
        if verdict_key is not None and result.stdout_end.rstrip().rpartition("\n")[2] != verdict_key:
            return "fail"  # left early (os._exit, an atexit handler, ...): the tests did not all run
        return "pass"
    if result.exit_code is not None and "AssertionError" in result.stderr_tail:
        return "fail"
    return "error"


@dataclass
class Job:
    argv: list[str] | None = None  # default: python main.py
    files: dict[str, str] = field(default_factory=dict)
    stdin: str = ""
    expected_stdout: str | None = None
    verdict_key: str | None = None  # set by function_test_job: the token only harness.py can print


@functools.cache
def _harness_source() -> str:
    return HARNESS.read_text()


def function_test_job(solution: str, tests: str) -> Job:
    """A job that runs `tests` (asserts, trusted) against `solution` (the candidate's code) through
    harness.py, which prints a fresh random key only after every test has run (see its docstring)."""
    key = secrets.token_hex(16)
    files = {"main.py": _harness_source(), "solution.py": solution, "tests.py": tests, "verdict.key": key}
    return Job(files=files, verdict_key=key)


@dataclass
class Verdict:
    status: Status
    reason: str
    stderr_tail: str
    wall_s: float


class SandboxPool:
    """Runs many jobs, at most `workers` at a time, each in its own sandbox run."""

    def __init__(self, workers: int = 4, limits: Limits = Limits(), python: str | None = None,
                 use_namespaces: bool = True, use_cgroups: bool = True):
        self.sandbox = Sandbox(limits, python, use_namespaces, use_cgroups=use_cgroups)
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox")

    def _one(self, job: Job) -> Verdict:
        argv = job.argv or [self.sandbox.python, "-I", "-B", "main.py"]
        r = self.sandbox.run(argv, job.files, job.stdin)
        return Verdict(judge(r, job.expected_stdout, job.verdict_key), r.reason, r.stderr_tail[-1000:], r.wall_s)

    def map(self, jobs: Iterable[Job]) -> list[Verdict]:
        self.sandbox.isolation()
        return list(self._executor.map(self._one, jobs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
