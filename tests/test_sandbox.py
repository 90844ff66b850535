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
    assert set(isolation) >= {"namespaces", "network", "filesystem", "processes", "uid_drop"}
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
    assert judge(sandbox.run_python("assert 1 == 2"), None) == "fail"
    assert judge(sandbox.run_python("raise ValueError('boom')"), None) == "error"


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
