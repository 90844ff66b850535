"""One resource budget per sandbox job, through the kernel's control groups.

rlimits are per process: 20 children of 400 MB each took 8 GB, 3 busy children used 13.5 CPU-seconds
under a 5-second limit, and a job with 31 busy children starved its neighbours. A cgroup holds the whole
process tree of one job (the launcher joins it before anything untrusted runs, and every child inherits
it), so:
- memory: one cap on everything the job's processes charge, which includes tmpfs and memfd pages;
- pids: one cap on the number of processes and threads;
- CPU time: the cgroup's usage counter is the CPU time of the whole tree; the host polls it and kills
  the job when it is over budget;
- fairness: every job cgroup gets the same CPU weight, so a job's share of the CPU does not grow with
  the number of processes it starts.

Both kernel interfaces are supported: v1 (one hierarchy per controller, as on these machines) and v2
(one unified hierarchy). `probe()` says which controllers a job cgroup can get here; what is missing is
reported by `Sandbox.isolation()` and not enforced. Only root can create them (the sandbox drops to a
per-run uid only as root anyway). All job cgroups sit under one `sdzero-sandbox` cgroup beside this
process, weighted like one busy thread per core. The v2 path follows the kernel's documentation but has
not run on a machine with cgroup v2 controllers (these machines mount v1); it also needs this process's
cgroup to be able to hand controllers to children (the root cgroup, or a delegated one such as a systemd
unit with Delegate=yes); elsewhere `probe()` reports "none".
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")
GROUP = "sdzero-sandbox"


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, options) of every cgroup mount."""
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            _, point, fstype, options = line.split()[:4]
            if fstype in ("cgroup", "cgroup2"):
                found.append((point, fstype, set(options.split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under "" its v2 path."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    return paths


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


class JobCgroup:
    """The cgroup(s) of one job; `name` must be unique on the machine while the job runs (the leased uid)."""

    def __init__(self, parents: dict[str, Path], version: int, name: str):
        self.version = version
        self.dirs = {c: p / name for c, p in parents.items()}  # v2: every controller maps to the same dir
        self.oom_kills_before = 0

    # ---------------------------------------------------------------- setup and teardown

    @classmethod
    def create(cls, name: str, memory_bytes: int, processes: int) -> "JobCgroup | None":
        """Create (or take over a stale) job cgroup with these caps; None when cgroups are not usable here."""
        parents, version = _parents()
        if not parents:
            return None
        job = cls(parents, version, name)
        for d in set(job.dirs.values()):
            if d.exists():
                job.kill_all()  # left by a process that died mid-job: it held this uid's lease
            d.mkdir(exist_ok=True)
        if version == 1:
            if "memory" in job.dirs:
                swap = job.dirs["memory"] / "memory.memsw.limit_in_bytes"
                if swap.exists():
                    _write(swap, "-1")  # memsw >= limit at every moment: lift it, set the limit, set it back
                _write(job.dirs["memory"] / "memory.limit_in_bytes", str(memory_bytes))
                if swap.exists():
                    _write(swap, str(memory_bytes))  # memory + swap: no escape into swap
            if "pids" in job.dirs:
                _write(job.dirs["pids"] / "pids.max", str(processes))
            if "cpu" in job.dirs:
                _write(job.dirs["cpu"] / "cpu.shares", "1024")  # every job the same weight
        else:
            d = job.dirs.get("memory")
            if d is not None:
                _write(d / "memory.max", str(memory_bytes))
                if (d / "memory.swap.max").exists():
                    _write(d / "memory.swap.max", "0")
            if "pids" in job.dirs:
                _write(job.dirs["pids"] / "pids.max", str(processes))
            if "cpu" in job.dirs:
                _write(job.dirs["cpu"] / "cpu.weight", "100")
        job.oom_kills_before = job.oom_kills()
        return job

    def join_files(self) -> list[str]:
        """Where a process writes its pid to join every controller's cgroup (the launcher does)."""
        return sorted({str(d / "cgroup.procs") for d in self.dirs.values()})

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in set(self.dirs.values()):
            try:
                found.update(int(x) for x in _read(d / "cgroup.procs").split())
            except OSError:
                pass
        return sorted(found)

    def kill_all(self) -> None:
        kill_until_none(self.pids, rounds=200)

    def remove(self) -> None:
        self.kill_all()
        for d in set(self.dirs.values()):
            for _ in range(100):  # a killed process leaves its cgroup a moment after it dies
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)

    # ---------------------------------------------------------------- accounting

    def cpu_seconds(self) -> float | None:
        """CPU time used by every process the job ever had (user + system)."""
        try:
            if self.version == 1 and "cpuacct" in self.dirs:
                return int(_read(self.dirs["cpuacct"] / "cpuacct.usage")) / 1e9
            if self.version == 2 and "cpu" in self.dirs:
                for line in _read(self.dirs["cpu"] / "cpu.stat").splitlines():
                    if line.startswith("usage_usec"):
                        return int(line.split()[1]) / 1e6
        except OSError:
            pass
        return None

    def memory_peak(self) -> int | None:
        d = self.dirs.get("memory")
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int(_read(d / name)) if d is not None else None
        except OSError:
            return None

    def oom_kills(self) -> int:
        d = self.dirs.get("memory")
        if d is None:
            return 0
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in _read(d / name).splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def new_oom_kills(self) -> int:
        return self.oom_kills() - self.oom_kills_before


def kill_until_none(list_pids, rounds: int) -> None:
    """SIGKILL every process `list_pids()` names until it names none (a fork bomb may still be forking)."""
    for _ in range(rounds):
        pids = list_pids()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


_PARENTS: tuple[dict[str, Path], int] | None = None


def _parents() -> tuple[dict[str, Path], int]:
    """The sdzero-sandbox cgroup under this process's own cgroup, per controller (created once)."""
    global _PARENTS
    if _PARENTS is None:
        _PARENTS = _find_parents()
    return _PARENTS


def _find_parents() -> tuple[dict[str, Path], int]:
    if os.geteuid() != 0:
        return {}, 0
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError:
        return {}, 0
    parents: dict[str, Path] = {}
    for point, fstype, options in mounts:  # v1: one hierarchy per controller (maybe co-mounted)
        if fstype != "cgroup":
            continue
        for c in V1_CONTROLLERS:
            if c in options and c in own and c not in parents:
                parent = Path(point + own[c]) / GROUP
                if _usable(parent):
                    parents[c] = parent
    if parents:
        if "cpu" in parents:  # all jobs together weigh as much as one busy thread per core beside the trainer
            _write(parents["cpu"] / "cpu.shares", str(1024 * (os.cpu_count() or 1)))
        return parents, 1
    for point, fstype, _ in mounts:  # v2: the controllers our cgroup may hand to children
        if fstype != "cgroup2" or "" not in own:
            continue
        base = Path(point + own[""])
        try:
            available = set(_read(base / "cgroup.controllers").split())
            wanted = [c for c in V2_CONTROLLERS if c in available]
            if not wanted:
                continue
            _write(base / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
            parent = base / GROUP
            parent.mkdir(exist_ok=True)
            _write(parent / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
            if "cpu" in wanted:
                _write(parent / "cpu.weight", str(min(10000, 100 * (os.cpu_count() or 1))))
        except OSError:  # e.g. our cgroup has processes of its own and is not the root: no delegation
            continue
        return {c: parent for c in wanted}, 2
    return {}, 0


def _usable(parent: Path) -> bool:
    try:
        parent.mkdir(exist_ok=True)
        probe = parent / f"probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        probe.rmdir()
        return True
    except OSError:
        return False


def probe(enforced: bool = True) -> dict[str, object]:
    """What a job cgroup enforces here, for `Sandbox.isolation()` (all False when the sandbox does not use them)."""
    parents, version = _parents() if enforced else ({}, 0)
    have = set(parents)
    return {
        "cgroup": f"v{version}" if version else "none",
        "job_memory": "memory" in have,
        "job_processes": "pids" in have,
        "job_cpu_time": ("cpuacct" if version == 1 else "cpu") in have,
        "fair_cpu_share": "cpu" in have,
    }
