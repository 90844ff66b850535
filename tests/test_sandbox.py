"""The sandbox against hostile programs. An attack prints 42 (the judge's "pass") only if it worked."""

import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from sdzero.sandbox import UID_BASE, UID_COUNT, Job, Limits, Sandbox, SandboxPool, judge, processes_of_uid

LIMITS = Limits(wall_s=4, cpu_s=2, memory_mb=256, processes=16, file_mb=4, open_files=32, disk_mb=16)
ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(LIMITS)


@pytest.fixture(scope="module")
def isolation(sandbox):
    iso = sandbox.isolation()
    print(f"sandbox isolation on this machine: {iso}")
    return iso


def sandbox_processes():
    return [pid for uid in range(UID_BASE, UID_BASE + UID_COUNT) for pid in processes_of_uid(uid)]


@pytest.fixture(scope="module")
def canaries():
    """Files the attacks try to delete or overwrite, in places the sandbox must not reach."""
    tag = uuid.uuid4().hex[:8]
    paths = [Path(f"/tmp/sdzero-canary-{tag}"), Path(__file__).resolve().parent / f".canary-{tag}"]
    odd_dir = Path(f"/sdzero-canary-dir-{tag}")  # a top-level folder no list of places to hide would name
    if ROOT:
        paths.append(Path(f"/var/tmp/sdzero-canary-{tag}"))
        odd_dir.mkdir(mode=0o777)
        odd_dir.chmod(0o777)
        paths.append(odd_dir / "canary")
    for p in paths:
        p.write_text("canary")
        p.chmod(0o666)  # even world-writable: only the sandbox's private view may keep it out
    yield paths
    for p in paths:
        p.unlink(missing_ok=True)
    if odd_dir.exists():
        odd_dir.rmdir()


@pytest.fixture(scope="module")
def victim():
    """A host process the attacks try to kill."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def listener():
    """A TCP server on the host's loopback that the network attack tries to reach."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    hits = []

    def accept():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                hits.append(1)
                conn.close()
            except OSError:
                pass

    stop = threading.Event()
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1], hits
    stop.set()
    t.join()
    srv.close()


SECRET = "sdzero-secret-" + uuid.uuid4().hex


def attacks(canaries, victim_pid, port):
    canary_list = [str(p) for p in canaries]
    outside = ["/etc/sdzero-pwned", str(Path(__file__).resolve().parent / "PWNED"), "/root/PWNED",
               "/usr/lib/sdzero-pwned"]
    return {
        "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                      {"timeout", "error"}),
        "fork bomb, no mercy": ("import os\nwhile True:\n    os.fork()\n", {"timeout", "error"}),
        "memory bomb": ("b = bytearray(4 << 30)\nprint(len(b))\n", {"error"}),
        "memory creep": ("chunks = []\nfor _ in range(10000):\n    chunks.append(bytearray(10 << 20))\n",
                         {"error"}),
        "infinite loop": ("while True:\n    pass\n", {"timeout"}),
        "busy threads": ("import threading\ndef spin():\n    while True: pass\n"
                         "ts = [threading.Thread(target=spin) for _ in range(8)]\n"
                         "[t.start() for t in ts]\n[t.join() for t in ts]\n", {"timeout", "error"}),
        "huge stdout": ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", {"error"}),
        "write outside": (f"ok = 0\nfor p in {outside!r} + {canary_list!r}:\n    try:\n"
                          f"        open(p, 'a').write('pwned')\n"
                          f"        ok += not p.startswith(('/tmp/', '/var/tmp/'))  # those two are private\n"
                          f"    except OSError:\n        pass\nif ok:\n    print(42)\n", {"fail", "error"}),
        "delete outside": (f"import os\ngone = 0\nfor p in {canary_list!r}:\n    try:\n        os.remove(p)\n"
                           f"        gone += 1\n    except OSError:\n        pass\nif gone:\n    print(42)\n",
                           {"fail", "error"}),
        "read parent env": (f"import os\nfound = {SECRET!r} in str(os.environ)\nfor pid in ['1', str(os.getppid()),"
                            f" '{os.getpid()}']:\n    try:\n        found |= {SECRET!r}.encode() in "
                            f"open(f'/proc/{{pid}}/environ', 'rb').read()\n    except OSError:\n        pass\n"
                            f"if found:\n    print(42)\n    print('{SECRET}')\n", {"fail", "error"}),
        "read home files": ("import os\nseen = []\nfor p in ['/root', '/home', os.path.expanduser('~root'), "
                            f"{str(Path(__file__).resolve().parents[1])!r}, {str(Path(canary_list[-1]).parent)!r}]:"
                            "\n    try:\n        seen += os.listdir(p)\n    except OSError:\n        pass\n"
                            "if seen:\n    print(42)\n    print(seen)\n", {"fail", "error"}),
        "network": (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n", {"error"}),
        "kill parent and others": (f"import os, signal\nkilled = 0\nfor pid in [os.getppid(), {victim_pid}]:\n"
                                   f"    try:\n        os.kill(pid, signal.SIGKILL)\n        killed += 1\n"
                                   f"    except OSError:\n        pass\nif killed:\n    print(42)\n",
                                   {"fail", "error"}),
        "spawn a shell": ("import subprocess\nsubprocess.run(['/bin/sh', '-c', 'id; echo pwned > /etc/pwned-by-sh; "
                          "cat /root/.bashrc'], check=True)\n", {"error"}),
        "exhaust file descriptors": ("fds = []\nwhile True:\n    fds.append(open('/dev/null'))\n", {"error"}),
        "segfault via ctypes": ("import ctypes\nctypes.string_at(0)\n", {"error"}),
        "sleep past the timeout": ("import time\ntime.sleep(60)\n", {"timeout"}),
        "deep recursion": ("import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)\n",
                           {"error", "timeout"}),  # 3.11 frames live on the heap: memory or CPU runs out first
        "fill the disk": ("import os\ni = 0\nwhile True:\n    with open(f'fill{i}', 'wb') as f:\n"
                          "        f.write(b'0' * (1 << 20))\n    i += 1\n", {"error"}),
        "daemon that outlives its parent": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n"
                                            "    time.sleep(30)\n    open('/tmp/late-write', 'w')\nprint('done')\n",
                                            {"fail"}),
    }


def test_isolation_is_reported(isolation):
    assert set(isolation) >= {"namespaces", "network", "filesystem", "processes", "uid_drop", "seccomp", "cgroup",
                              "job_memory", "job_processes", "job_cpu_time", "fair_cpu_share", "verdict_key_private"}
    if ROOT:  # what these machines allow (the test says which, so a fallback is never silent)
        assert isolation["network"] == "namespace", isolation


def test_attack_battery(sandbox, isolation, canaries, victim, listener, monkeypatch):
    monkeypatch.setenv("SDZERO_HOST_SECRET", SECRET)
    port, hits = listener
    battery = attacks(canaries, victim.pid, port)
    assert len(battery) >= 15
    tmp_before = set(os.listdir("/tmp"))
    failures = []
    for name, (source, allowed) in battery.items():
        result = sandbox.run_python(source)
        verdict = judge(result, expected_stdout="42")
        if verdict not in allowed:
            failures.append(f"{name}: {verdict} ({result.reason}) {result.stderr_tail[-300:]}")
        if SECRET in result.stdout:
            failures.append(f"{name}: the secret leaked")
        left = sandbox_processes()
        if left:
            failures.append(f"{name}: processes left running: {left}")
    assert not failures, "\n".join(failures)
    # Nothing outside the sandbox changed, and the host is fine.
    assert all(p.read_text() == "canary" for p in canaries)
    for p in ["/etc/sdzero-pwned", "/etc/pwned-by-sh", "/root/PWNED", "/usr/lib/sdzero-pwned",
              str(Path(__file__).resolve().parent / "PWNED"), "/tmp/late-write"]:
        assert not os.path.exists(p), p
    assert not [f for f in set(os.listdir("/tmp")) - tmp_before if f.startswith("fill")]
    if isolation["network"] == "namespace":
        assert hits == []
    assert victim.poll() is None  # still running
    assert judge(sandbox.run_python("print(6 * 7)"), expected_stdout="42") == "pass"  # still responsive


def test_a_correct_program_passes_and_reads_stdin(sandbox):
    r = sandbox.run_python("import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))", stdin="1 2 3\n")
    assert judge(r, "6") == "pass" and judge(r, "7") == "fail"
    assert judge(sandbox.run_python("assert 1 == 2"), verdict_key="k") == "fail"
    assert judge(sandbox.run_python("raise ValueError('boom')"), verdict_key="k") == "error"
    assert judge(sandbox.run_python("print('k')"), verdict_key="k") == "pass"
    assert judge(sandbox.run_python("print('k')\nprint('more')"), verdict_key="k") == "fail"  # the key comes last
    with pytest.raises(ValueError, match="exit code alone"):
        judge(sandbox.run_python("pass"))


def test_environment_is_scrubbed(sandbox, monkeypatch):
    monkeypatch.setenv("SDZERO_HOST_SECRET", SECRET)
    r = sandbox.run_python("import os, json\nprint(json.dumps(dict(os.environ)))")
    assert r.ok and SECRET not in r.stdout and "SDZERO_HOST_SECRET" not in r.stdout
    assert '"PATH"' in r.stdout


@pytest.mark.skipif(not ROOT, reason="the per-run uid needs root to switch to")
def test_each_run_has_its_own_unprivileged_uid(sandbox):
    r = sandbox.run_python("import os\nprint(os.getuid(), os.getgid(), os.getgroups())")
    uid, gid, groups = r.stdout.split(maxsplit=2)
    assert UID_BASE <= int(uid) < UID_BASE + UID_COUNT and uid == gid and groups.strip() == "[]"


def test_pool_runs_many_programs_without_leaking(tmp_path):
    """1000 programs through the pool: right verdicts, no leaked processes or file descriptors."""
    fds_before = len(os.listdir("/proc/self/fd"))
    children_before = _children()
    jobs = [Job(files={"main.py": f"print({i} * 2)"}, expected_stdout=str(2 * i if i % 10 else -1))
            for i in range(1000)]
    with SandboxPool(workers=4, limits=Limits(wall_s=10, cpu_s=5)) as pool:
        verdicts = pool.map(jobs)
    assert [v.status for v in verdicts] == ["pass" if i % 10 else "fail" for i in range(1000)]
    assert sandbox_processes() == []
    assert not list(Path("/sys/fs/cgroup").glob("**/sdzero-sandbox/uid-*"))  # every job's cgroup removed
    assert _children() <= children_before
    assert len(os.listdir("/proc/self/fd")) <= fds_before


def _children() -> set[str]:
    return {p for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == os.getpid()}


def _ppid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ---------------------------------------------------------------- one budget per job (cgroups)

def needs(isolation, key):
    if not isolation.get(key):
        pytest.skip(f"{key} is not enforced on this machine: {isolation}")


HOLD_IN_CHILDREN = """
import os, select, sys, time
r, w = os.pipe()
kids = []
for _ in range({children}):
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
{allocate}
            os.write(w, b"x")
            time.sleep(3)
        finally:
            os._exit(0)
    kids.append(pid)
os.close(w)
got, deadline = 0, time.time() + 5
while got < {children} and select.select([r], [], [], max(0, deadline - time.time()))[0]:
    chunk = os.read(r, 100)
    if not chunk:
        break
    got += len(chunk)
alive = sum(os.waitpid(k, os.WNOHANG) == (0, 0) for k in kids)
print("held", alive * {mb}, "MB at once", file=sys.stderr)
if alive * {mb} > {cap}:
    print(42)
"""

MEMORY_PAYLOADS = {  # each child holds 100 MB, under the per-process address-space limit of 256 MB
    "anonymous memory": "            b = bytearray(100 << 20)\n            b[::4096] = b'x' * len(b[::4096])\n",
    "memfd files": "            fds = [os.memfd_create('m') for _ in range(25)]\n"
                   "            [os.write(fd, b'x' * (4 << 20)) for fd in fds]\n",
}


@pytest.mark.parametrize("payload", sorted(MEMORY_PAYLOADS))
def test_memory_is_one_budget_for_the_whole_job(sandbox, isolation, payload):
    """6 children x 100 MB: each is under the per-process cap; together they are over the job's 272 MB."""
    needs(isolation, "job_memory")
    cap = LIMITS.memory_mb + LIMITS.disk_mb
    source = HOLD_IN_CHILDREN.format(children=6, allocate=MEMORY_PAYLOADS[payload], mb=100, cap=cap)
    r = sandbox.run_python(source, limits=Limits(wall_s=20, cpu_s=10, memory_mb=256, processes=16, file_mb=4,
                                                 disk_mb=16))
    assert judge(r, expected_stdout="42") != "pass", r
    assert r.peak_memory_mb is not None and r.peak_memory_mb <= cap, r.peak_memory_mb


def test_cpu_time_is_one_budget_for_the_whole_job(sandbox, isolation):
    """3 children x 1.5 CPU-seconds, each under cpu_s=2: the job as a whole is not."""
    needs(isolation, "job_cpu_time")
    source = ("import os, time\nkids = []\nfor _ in range(3):\n    pid = os.fork()\n    if pid == 0:\n"
              "        while time.process_time() < 1.5:\n            pass\n        os._exit(0)\n    kids.append(pid)\n"
              "for k in kids:\n    os.waitpid(k, 0)\nprint(42)\n")
    r = sandbox.run_python(source, limits=Limits(wall_s=30, cpu_s=2, memory_mb=256, processes=16))
    assert judge(r, expected_stdout="42") == "timeout", r
    assert "all processes" in r.reason


def test_one_job_with_many_busy_children_does_not_starve_its_neighbours(isolation):
    needs(isolation, "fair_cpu_share")
    hog = ("import os\nfor _ in range(31):\n    if os.fork() == 0:\n        os.setsid()\n        while True:\n"
           "            pass\nwhile True:\n    pass\n")
    honest = "import time\nwhile time.process_time() < 0.5:\n    pass\nprint(42)\n"
    jobs = [Job(files={"main.py": hog}, expected_stdout="42")] + \
        [Job(files={"main.py": honest}, expected_stdout="42") for _ in range(3)]
    with SandboxPool(workers=4, limits=Limits(wall_s=8, cpu_s=5, processes=64)) as pool:
        verdicts = pool.map(jobs)
    assert verdicts[0].status == "timeout"
    assert [v.status for v in verdicts[1:]] == ["pass"] * 3, verdicts


@pytest.mark.skipif(not ROOT, reason="the uid drop (and so the seccomp filter after it) needs root")
def test_no_new_user_namespaces_inside(sandbox):
    """Inside a user namespace of its own a program could mount an uncapped tmpfs."""
    source = ("import ctypes, subprocess\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              "ok = libc.unshare(0x10000000) == 0\n"  # CLONE_NEWUSER
              "try:\n    ok |= subprocess.run(['unshare', '-Ur', 'true']).returncode == 0\n"
              "except OSError:\n    pass\nif ok:\n    print(42)\n")
    r = sandbox.run_python(source)
    assert r.exit_code == 0 and judge(r, expected_stdout="42") == "fail", r
    threads = sandbox.run_python("import threading, subprocess\nt = threading.Thread(target=print, args=(1,))\n"
                                 "t.start(); t.join()\nprint(subprocess.run(['echo', '2'], capture_output=True)"
                                 ".stdout.decode().strip())\n")
    assert threads.stdout.split() == ["1", "2"], threads  # threads and subprocesses still work


@pytest.mark.skipif(not ROOT, reason="keyrings are per uid; the uid drop needs root")
def test_kernel_keys_do_not_survive_into_the_next_run():
    one_uid = Sandbox(LIMITS, uids=range(UID_BASE + UID_COUNT - 1, UID_BASE + UID_COUNT))
    add = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "key = libc.syscall(248, b'user', b'sdzero-left-behind', b'secret', 6, ctypes.c_long(-4))\n"  # add_key
           "print('added' if key > 0 else 'refused')\n")
    find = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "key = libc.syscall(250, 10, ctypes.c_long(-4), b'user', b'sdzero-left-behind', 0)\n"  # keyctl search
            "if key > 0:\n    print(42)\n")
    assert one_uid.run_python(add).stdout.strip() == "refused"  # key syscalls are not for sandboxed programs
    assert judge(one_uid.run_python(find), expected_stdout="42") == "fail"


@pytest.mark.skipif(not ROOT, reason="the uid lease matters where the sandbox switches uid (root)")
def test_two_processes_judging_at_once_never_share_a_uid(tmp_path):
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _uid_script(), str(tmp_path / f"ready{i}"), str(go)],
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
    go.write_text("go")  # both start their programs at the same moment
    uids = [set(p.communicate(timeout=120)[0].split()) for p in procs]
    assert all(len(u) == 3 for u in uids), uids
    assert not uids[0] & uids[1], uids


def _uid_script() -> str:
    """A process that waits for a start signal, then runs 3 programs at once, printing the uid each ran as."""
    return ("import os, sys, time\nfrom concurrent.futures import ThreadPoolExecutor\n"
            "from sdzero.sandbox import Limits, Sandbox\n"
            "box = Sandbox(Limits(wall_s=20))\nbox.isolation()\nopen(sys.argv[1], 'w').write('ready')\n"
            "while not os.path.exists(sys.argv[2]):\n    time.sleep(0.01)\n"
            "src = 'import os, time\\nprint(os.getuid())\\ntime.sleep(1.5)'\n"
            "with ThreadPoolExecutor(3) as ex:\n    runs = list(ex.map(lambda _: box.run_python(src), range(3)))\n"
            "print(' '.join(r.stdout.strip() for r in runs))\n")


def test_the_reason_of_a_kill_is_the_real_one(sandbox, isolation):
    r = sandbox.run_python("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert r.signal == 9 and r.reason == "killed by SIGKILL" and not r.timed_out, r
    if isolation.get("job_memory"):  # memfd pages are outside the address-space limit, inside the job's budget
        hog = "import os\nheld = []\nwhile True:\n    held.append(os.memfd_create('m'))\n" \
              "    os.write(held[-1], b'x' * (4 << 20))\n"
        r = sandbox.run_python(hog, limits=Limits(wall_s=20, cpu_s=10, memory_mb=256, file_mb=4, open_files=1000))
        assert r.signal == 9 and r.reason == "out of memory (the job's memory budget)", r
