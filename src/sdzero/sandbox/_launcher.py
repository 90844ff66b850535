"""Sandbox launcher: run by the sandbox as `python -I _launcher.py SPEC_JSON_PATH`, stdlib only.

It runs as the sandbox's parent user (root on these machines) and, in order:
1. reads the spec (stdin, stdout, stderr and status are inherited fds) and joins the job's cgroups, so
   the job's budgets (memory, CPU time, processes, CPU share) hold everything it will start;
2. unshares the PID, mount, network and IPC namespaces (falls back, and says so, where not allowed);
3. forks: the child is PID 1 of the new PID namespace (a reaper). When it exits, the kernel kills every
   process left in the namespace, so nothing the program spawned, even with setsid, outlives the run;
4. the reaper builds a new root from an allowlist and pivots into it: read-only binds of the system
   directories (/usr, /bin, /lib*, /sbin, /etc) and of the interpreter's own prefix when it lives elsewhere,
   a minimal /dev (null, zero, full, random, urandom), a fresh /proc that shows only the sandbox's
   processes, and size-capped private tmpfs on /tmp (/var/tmp points there) and /dev/shm as the only
   writable places. Nothing else of the host's filesystem exists inside: not the checkout, not /home, not
   whatever directory a CI machine happens to use. The old root is unmounted. It then writes the program's
   files into /tmp/sandbox and forks the program;
5. the program sets resource limits, makes itself the first choice of the job's OOM killer, drops to the
   unprivileged uid/gid (no supplementary groups), closes every other fd, installs a seccomp filter (no new user namespaces, no kernel-key
   syscalls, no other syscall ABI) and execs with a scrubbed environment;
6. the reaper waits, writes {exit, signal, cpu_s, isolation} to the status fd and exits.

An allowlist, not a list of places to hide: an earlier version hid /home, /work and /root and left the rest
of the host visible, and a hostile program rewrote a world-writable file in a CI checkout under /check.
"""

import ctypes
import json
import os
import resource
import struct
import sys

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWIPC = 0x00020000, 0x40000000, 0x20000000, 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 0x1, 0x2, 0x4, 0x8, 0x20, 0x1000
MS_REC, MS_PRIVATE, MNT_DETACH = 0x4000, 0x40000, 0x2
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES = ("null", "zero", "full", "random", "urandom")
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# audit arch, then the numbers of unshare, clone, clone3, add_key, request_key, keyctl
SECCOMP_ARCH = {"x86_64": (0xC000003E, 272, 56, 435, 248, 249, 250),
                "aarch64": (0xC00000B7, 97, 220, 435, 217, 218, 219)}
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, CLONE_NEWUSER = 38, 22, 2, 0x10000000


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    status_fd = spec["status_fd"]
    isolation = {"namespaces": False, "network": "none", "filesystem": "directory", "processes": "uid",
                 "seccomp": os.uname().machine in SECCOMP_ARCH}
    try:
        for procs in spec["cgroup_procs"]:  # the job's budget holds everything from here on
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
    except OSError as e:
        _status(status_fd, {"setup_error": f"joining the job's cgroup: {e}", "isolation": isolation})
        os._exit(126)
    libc = ctypes.CDLL(None, use_errno=True)
    if spec["use_namespaces"] and libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC) == 0:
        isolation.update(namespaces=True, network="namespace", filesystem="allowlist-root", processes="pid-namespace")
    reaper = os.fork()
    if reaper:
        _, st = os.waitpid(reaper, 0)
        os._exit(os.waitstatus_to_exitcode(st) & 0xFF if os.WIFEXITED(st) else 125)
    # The reaper (PID 1 of the new namespace when namespaces are on).
    work = spec["workdir"]
    try:
        if isolation["namespaces"]:
            _enter_new_root(libc, spec)
            os.makedirs(work, exist_ok=True)
        for name, text in spec["files"].items():  # 0600 under 0700: no other uid reads them (verdict.key)
            with os.fdopen(os.open(os.path.join(work, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(text)
        os.chmod(work, 0o700)
        if os.getuid() == 0:
            for root, dirs, files in os.walk(work):
                for n in [root] + [os.path.join(root, x) for x in dirs + files]:
                    os.chown(n, spec["uid"], spec["gid"])
    except OSError as e:
        _status(status_fd, {"setup_error": str(e), "isolation": isolation})
        os._exit(126)
    program = os.fork()
    if program == 0:
        try:
            _become_program(spec, work, libc)
        except BaseException as e:  # exec failed: report, never fall through into reaper code
            os.write(2, f"sandbox: cannot start program: {e}\n".encode())
            os._exit(127)
    os.close(0)
    while True:  # reap everything; return when the program itself ends
        pid, st, usage = os.wait4(-1, 0)
        if pid == program:
            break
    out = {"isolation": isolation, "cpu_s": round(usage.ru_utime + usage.ru_stime, 3)}
    if os.WIFSIGNALED(st):
        out["signal"] = os.WTERMSIG(st)
    else:
        out["exit"] = os.WEXITSTATUS(st)
    _status(status_fd, out)
    os._exit(0)  # as PID 1 this tears the namespace down: every leftover process is killed


def _become_program(spec, work, libc) -> None:
    os.dup2(spec["stdin_fd"], 0)
    os.dup2(spec["stdout_fd"], 1)
    os.dup2(spec["stderr_fd"], 2)
    os.closerange(3, 65536)
    limits = spec["limits"]
    for res, value in ((resource.RLIMIT_CPU, limits["cpu_s"]), (resource.RLIMIT_AS, limits["memory_bytes"]),
                       (resource.RLIMIT_NPROC, limits["processes"]), (resource.RLIMIT_FSIZE, limits["file_bytes"]),
                       (resource.RLIMIT_NOFILE, limits["open_files"]), (resource.RLIMIT_CORE, 0)):
        hard = value + 1 if res == resource.RLIMIT_CPU else value  # SIGXCPU first, then SIGKILL a second later
        resource.setrlimit(res, (value, hard))
    os.chdir(work)
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")  # the job's OOM kills hit the program and its children first, not the reaper
    if os.getuid() == 0:
        os.setgroups([])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
    os.setsid()
    _forbid_new_user_namespaces(libc)
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


def _forbid_new_user_namespaces(libc) -> None:
    """A seccomp filter. unshare/clone with CLONE_NEWUSER fail with EPERM: inside a user namespace of its own
    a program could mount an uncapped tmpfs. clone3 fails with ENOSYS (its flags live in memory a filter
    cannot read; libc falls back to clone). add_key/request_key/keyctl fail with ENOSYS: kernel keys outlive
    the run (the uid's persistent keyring included), and no test needs them. Syscalls of another ABI (x86's
    int 0x80, x32) fail with EPERM, so none of this is bypassed through other syscall numbers."""
    machine = os.uname().machine
    if machine not in SECCOMP_ARCH:
        return
    arch, unshare, clone, clone3, add_key, request_key, keyctl = SECCOMP_ARCH[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, enosys, eperm = 0x7FFF0000, 0x00050000 | 38, 0x00050000 | 1
    program = [  # (code, jump if true, jump if false, k); a jump names the label it lands on
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 0, "deny", arch),
        (ld, 0, 0, 0),  # seccomp_data.nr
        (jge, "deny", 0, 0x40000000),  # the x32 ABI
        (jeq, "nosys", 0, clone3), (jeq, "nosys", 0, add_key), (jeq, "nosys", 0, request_key),
        (jeq, "nosys", 0, keyctl),
        (jeq, "flags", 0, unshare), (jeq, "flags", 0, clone),
        (ret, 0, 0, allow),
        "flags", (ld, 0, 0, 16),  # the low 32 bits of the first argument
        (jset, "deny", 0, CLONE_NEWUSER),
        (ret, 0, 0, allow),
        "nosys", (ret, 0, 0, enosys),
        "deny", (ret, 0, 0, eperm),
    ]
    code = _assemble(program)
    buffer = ctypes.create_string_buffer(code, len(code))

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = Prog(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "installing the seccomp filter")


def _assemble(program) -> bytes:
    """Classic BPF: each instruction is (code, jt, jf, k); a string entry is a label, and a string jump
    target becomes the number of instructions skipped to reach that label."""
    labels, index = {}, 0
    for item in program:
        if isinstance(item, str):
            labels[item] = index
        else:
            index += 1
    out, index = [], 0
    for item in program:
        if isinstance(item, str):
            continue
        code, jt, jf, k = item
        jt, jf = (labels[j] - index - 1 if isinstance(j, str) else j for j in (jt, jf))
        out.append(struct.pack("=HBBI", code, jt, jf, k))
        index += 1
    return b"".join(out)


def _enter_new_root(libc, spec) -> None:
    """Build the allowlisted root on a tmpfs and pivot into it (all inside our private mount namespace)."""
    _mount(libc, b"none", b"/", None, MS_REC | MS_PRIVATE, None)  # nothing we mount reaches the host
    root = "/tmp"  # any existing directory works as the mount point; the host's /tmp is untouched
    _mount(libc, b"tmpfs", root.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=755")
    shown = [d for d in SYSTEM_DIRS if os.path.lexists(d)]
    shown += [d for d in spec["keep_visible"] if not any(d == s or d.startswith(s + "/") for s in SYSTEM_DIRS)]
    for d in shown:
        inside = root + d
        if os.path.islink(d):  # merged /usr: /bin -> usr/bin and the like
            os.makedirs(os.path.dirname(inside), exist_ok=True)
            os.symlink(os.readlink(d), inside)
        elif os.path.isdir(d):
            os.makedirs(inside, exist_ok=True)
            _bind_read_only(libc, d, inside)
    size = f"size={spec['disk_bytes']},mode=1777".encode()
    for d in ("/tmp", "/dev/shm"):
        os.makedirs(root + d, exist_ok=True)
        _mount(libc, b"tmpfs", (root + d).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, size)
    os.makedirs(root + "/var", exist_ok=True)
    os.symlink("/tmp", root + "/var/tmp")
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        _mount(libc, f"/dev/{name}".encode(), f"{root}/dev/{name}".encode(), None, MS_BIND, None)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{root}/dev/{name}")
    os.symlink("/proc/self/fd", root + "/dev/fd")
    os.makedirs(root + "/proc")
    _mount(libc, b"proc", (root + "/proc").encode(), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    os.makedirs(root + "/.old-root")
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is not None and libc.syscall(number, b".", b".old-root") == 0:
        if libc.umount2(b"/.old-root", MNT_DETACH) != 0:
            raise OSError(ctypes.get_errno(), "umount the old root")
        os.rmdir("/.old-root")
    else:  # unknown architecture: chroot; the program, unprivileged, cannot break out of it
        os.rmdir(".old-root")
        os.chroot(".")
    os.chdir("/")
    _mount(libc, b"none", b"/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)


def _bind_read_only(libc, src: str, target: str) -> None:
    # Not recursive: mounts below `src` (a container's /etc/hosts, say) stay out, so none of them is writable.
    _mount(libc, src.encode(), target.encode(), None, MS_BIND, None)
    _mount(libc, b"none", target.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)


def _mount(libc, src, target, fstype, flags, data) -> None:
    if libc.mount(src, target, fstype, flags, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target.decode()}: {os.strerror(err)}")


def _status(fd: int, obj) -> None:
    os.write(fd, json.dumps(obj).encode())


if __name__ == "__main__":
    main()
