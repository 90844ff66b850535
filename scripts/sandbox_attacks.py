"""The attack classes of issue 14 at full size, with the host's memory watched while they run.

    python scripts/sandbox_attacks.py [--load 1000]

For each attack: whether it worked, the sandbox's reason, the job's peak memory as its cgroup counted it,
and the host's peak memory held by processes, tmpfs and memfd (AnonPages + Shmem, sampled every 10 ms)
above what it was before. Then two
processes judging at once (do they share a uid?) and the load test (programs/s, anything leaked).
Needs root (the uid drop, cgroups); run it on an otherwise idle machine for the rates.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sdzero.sandbox import UID_BASE, UID_COUNT, Job, Limits, Sandbox, SandboxPool, judge, processes_of_uid

MB = 1 << 20
DEFAULT = Limits()  # what code tasks use for Python: 10 s wall, 5 CPU-s, 512 MB (+ 64 MB tmpfs)


def host_used() -> int:
    """Memory held by every process of the host (AnonPages) plus tmpfs and memfd pages (Shmem). Not
    MemTotal - MemAvailable: in these VMs MemFree lags freed pages, by a different amount each run."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            info[key] = int(value.split()[0]) * 1024
    return info["AnonPages"] + info["Shmem"]


class HostMemory:
    """Peak host memory in use while the block runs, above the level before it."""

    def __enter__(self):
        self.base = self.peak = host_used()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, host_used())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.extra_mb = (self.peak - self.base) / MB


def children_holding(children: int, allocate: str, mb: int) -> str:
    """Each child allocates, reports through a pipe and holds; after 5 s the parent counts the live ones and
    prints 42 only if all of them held their memory at once."""
    return (f"import os, select, sys, time\nr, w = os.pipe()\nkids = []\nfor _ in range({children}):\n"
            f"    pid = os.fork()\n    if pid == 0:\n        try:\n{allocate}            os.write(w, b'x')\n"
            f"            time.sleep(6)\n        finally:\n            os._exit(0)\n    kids.append(pid)\n"
            f"os.close(w)\ngot, end = 0, time.time() + 5\n"
            f"while got < {children} and select.select([r], [], [], max(0, end - time.time()))[0]:\n"
            f"    chunk = os.read(r, 100)\n    if not chunk:\n        break\n    got += len(chunk)\n"
            f"alive = sum(os.waitpid(k, os.WNOHANG) == (0, 0) for k in kids)\n"
            f"print(f'held {{alive * {mb}}} MB at once', file=sys.stderr)\nif alive == {children}:\n    print(42)\n")


ANON_400 = "            b = bytearray(400 << 20)\n            b[::4096] = b'x' * len(b[::4096])\n"
MEMFD_960 = ("            fds = [os.memfd_create('m') for _ in range(15)]\n"
             "            [os.write(fd, b'x' * ((16 << 20) - 1)) for fd in fds]\n")
CPP_CHILDREN = r"""
#include <cstdlib>
#include <cstring>
#include <unistd.h>
#include <sys/wait.h>
#include <cstdio>
int main() {
  for (int i = 0; i < 4; i++) if (fork() == 0) {
    size_t n = (size_t)1536 << 20; volatile char *p = (volatile char *)malloc(n);  // volatile: not optimised away
    if (p) { for (size_t j = 0; j < n; j += 4096) p[j] = 1; sleep(4); _exit(7); }
    _exit(0);
  }
  int st, held = 0;
  while (wait(&st) > 0) held += WIFEXITED(st) && WEXITSTATUS(st) == 7;  // survived holding 1.5 GB
  fprintf(stderr, "held %d MB at once\n", held * 1536);
  if (held == 4) puts("42");
}
"""
USERNS_TMPFS = ("import subprocess\nr = subprocess.run(['unshare', '-Urm', 'sh', '-c', 'mount -t tmpfs none /mnt && "
                "head -c 4000000000 /dev/zero > /mnt/big && echo 42'], capture_output=True, text=True)\n"
                "print(r.stdout, end='')\nimport sys\nprint(r.stderr[-200:], file=sys.stderr)\n")
CPU_CHILDREN = ("import os, time\nkids = []\nfor _ in range(3):\n    pid = os.fork()\n    if pid == 0:\n"
                "        while time.process_time() < 4.5:\n            pass\n        os._exit(0)\n    kids.append(pid)\n"
                "for k in kids:\n    os.waitpid(k, 0)\nprint(42)\n")


def attack(box: Sandbox, name: str, argv, files, limits: Limits) -> None:
    with HostMemory() as host:
        r = box.run(argv, files, limits=limits)
    worked = judge(r, expected_stdout="42") == "pass"  # the program prints 42 only if the attack worked
    cap = limits.memory_mb + limits.disk_mb
    said = next((line for line in r.stderr_tail.splitlines() if line.startswith("held")), "")
    print(f"| {name} | {'WORKED' if worked else 'contained'} {said} | {r.reason or 'clean exit'} | "
          f"{r.peak_memory_mb} | {cap} | {host.extra_mb:.0f} |", flush=True)


def noisy_neighbour() -> None:
    hog = ("import os\nfor _ in range(31):\n    if os.fork() == 0:\n        os.setsid()\n        while True:\n"
           "            pass\nwhile True:\n    pass\n")
    honest = "import time\nwhile time.process_time() < 1.5:\n    pass\nprint(42)\n"
    jobs = [Job(files={"main.py": hog}, expected_stdout="42")] + \
        [Job(files={"main.py": honest}, expected_stdout="42") for _ in range(3)]
    with SandboxPool(workers=4, limits=Limits(processes=64)) as pool:
        verdicts = pool.map(jobs)
    print(f"| noisy neighbour: 31 busy children in their own sessions beside 3 honest 1.5-CPU-s jobs | hog: "
          f"{verdicts[0].status} ({verdicts[0].reason}) | honest: {[v.status for v in verdicts[1:]]}, wall "
          f"{[round(v.wall_s, 1) for v in verdicts[1:]]} s |")


def keys(box_uid: int) -> None:
    box = Sandbox(uids=range(box_uid, box_uid + 1))
    add = ("import ctypes\nlibc = ctypes.CDLL(None)\nprint(libc.syscall(248, b'user', b'left-behind', b'secret', 6, "
           "ctypes.c_long(-4)) > 0)\n")
    find = ("import ctypes\nlibc = ctypes.CDLL(None)\nif libc.syscall(250, 10, ctypes.c_long(-4), b'user', "
            "b'left-behind', 0) > 0:\n    print(42)\n")
    added = box.run_python(add).stdout.strip()
    print(f"| kernel key left by one run, read by the next run of the same uid | added: {added} | next run "
          f"finds it: {judge(box.run_python(find), expected_stdout='42') == 'pass'} |")


def two_processes() -> None:
    with tempfile.TemporaryDirectory() as d:
        go = Path(d) / "go"
        script = ("import os, sys, time\nfrom concurrent.futures import ThreadPoolExecutor\n"
                  "from sdzero.sandbox import Limits, Sandbox\nbox = Sandbox(Limits(wall_s=30))\nbox.isolation()\n"
                  "open(sys.argv[1], 'w').close()\nwhile not os.path.exists(sys.argv[2]):\n    time.sleep(0.01)\n"
                  "src = 'import os, time\\nprint(os.getuid())\\ntime.sleep(2)'\n"
                  "with ThreadPoolExecutor(8) as ex:\n    runs = list(ex.map(lambda _: box.run_python(src), range(8)))\n"
                  "print(' '.join(r.stdout.strip() or r.reason for r in runs))\n")
        procs = [subprocess.Popen([sys.executable, "-c", script, f"{d}/ready{i}", str(go)], stdout=subprocess.PIPE,
                                  text=True) for i in range(2)]
        while not all(os.path.exists(f"{d}/ready{i}") for i in range(2)):
            time.sleep(0.01)
        go.touch()
        uids = [p.communicate()[0].split() for p in procs]
    shared = set(uids[0]) & set(uids[1])
    print(f"| two processes, 8 programs each at the same moment | uids: {len(set(uids[0]))} + {len(set(uids[1]))} "
          f"distinct | shared: {sorted(shared) or 'none'} |")


def load_test(programs: int) -> None:
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    fds_before = len(os.listdir("/proc/self/fd"))
    jobs = [Job(files={"main.py": f"print({i} * 2)"}, expected_stdout=str(2 * i)) for i in range(programs)]
    with SandboxPool(workers=4, limits=Limits(wall_s=20)) as pool:
        pool.sandbox.isolation()
        t0 = time.perf_counter()
        verdicts = pool.map(jobs)
        rate = programs / (time.perf_counter() - t0)
    left = [p for uid in range(UID_BASE, UID_BASE + UID_COUNT) for p in processes_of_uid(uid)]
    new_tmp = [f for f in set(os.listdir(tempfile.gettempdir())) - tmp_before if f.startswith("sdzero-sbx")]
    cgroups = [str(p) for p in Path("/sys/fs/cgroup").glob("**/sdzero-sandbox/uid-*")]
    print(f"| load test: {programs} programs, 4 workers | {rate:.1f} programs/s | passed "
          f"{sum(v.status == 'pass' for v in verdicts)}/{programs} | leaked: processes {len(left)}, fds "
          f"{len(os.listdir('/proc/self/fd')) - fds_before}, temp dirs {len(new_tmp)}, cgroups {len(cgroups)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", type=int, default=1000, help="programs in the load test")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the uid drop and the cgroups need it")
    box = Sandbox()
    print(f"isolation: {box.isolation()}\n")
    print("| attack | outcome | reason | job peak MB (cgroup) | job cap MB | host anon+shmem peak above before, MB |")
    print("|---|---|---|---|---|---|")
    python = [box.python, "-I", "-B", "main.py"]
    attack(box, "20 children x 400 MB", python, {"main.py": children_holding(20, ANON_400, 400)},
           Limits(processes=64))
    attack(box, "memfd files, 4 children x 15 x 16 MB", python, {"main.py": children_holding(4, MEMFD_960, 240)},
           Limits(file_mb=16))
    attack(box, "user namespace + own tmpfs, 4 GB", python, {"main.py": USERNS_TMPFS}, DEFAULT)
    if shutil.which("g++"):
        attack(box, "C++: 4 children x 1.5 GB", ["/bin/sh", "-c", "g++ -O2 -o prog main.cpp && exec ./prog"],
               {"main.cpp": CPP_CHILDREN}, Limits(wall_s=30, memory_mb=2048))
    attack(box, "3 children x 4.5 CPU-s under cpu_s=5", python, {"main.py": CPU_CHILDREN}, Limits(wall_s=30))
    print()
    noisy_neighbour()
    keys(UID_BASE + UID_COUNT - 1)
    two_processes()
    load_test(args.load)


if __name__ == "__main__":
    main()
