"""Sandbox launcher: run by the sandbox as `python -I _launcher.py SPEC_JSON_PATH`, stdlib only.

It runs as the sandbox's parent user (root on these machines) and, in order:
1. reads the spec and opens every file it needs (stdin, stdout, stderr and status are inherited fds);
2. unshares the PID, mount, network and IPC namespaces (falls back, and says so, where not allowed);
3. forks: the child is PID 1 of the new PID namespace (a reaper). When it exits, the kernel kills every
   process left in the namespace, so nothing the program spawned, even with setsid, outlives the run;
4. the reaper makes mounts private, puts size-capped private tmpfs over /tmp, /var/tmp and /dev/shm
   (the only writable places, gone after the run), hides /home, /work and /root behind empty read-only
   tmpfs, mounts a fresh /proc (only the sandbox's processes are visible), writes the program's files
   into /tmp/sandbox, then forks the program;
5. the program sets resource limits, drops to the unprivileged uid/gid (no supplementary groups),
   closes every other fd and execs with a scrubbed environment;
6. the reaper waits, writes {exit, signal, isolation} to the status fd and exits.
"""

import ctypes
import json
import os
import resource
import sys

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWIPC = 0x00020000, 0x40000000, 0x20000000, 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x1, 0x2, 0x4, 0x8, 0x4000, 0x40000
HIDDEN = ("/home", "/work", "/root", "/mnt", "/srv", "/opt")


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    status_fd = spec["status_fd"]
    isolation = {"namespaces": False, "network": "none", "filesystem": "directory", "processes": "uid"}
    libc = ctypes.CDLL(None, use_errno=True)
    if spec["use_namespaces"] and libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC) == 0:
        isolation.update(namespaces=True, network="namespace", filesystem="private-tmpfs", processes="pid-namespace")
    reaper = os.fork()
    if reaper:
        _, st = os.waitpid(reaper, 0)
        os._exit(os.waitstatus_to_exitcode(st) & 0xFF if os.WIFEXITED(st) else 125)
    # The reaper (PID 1 of the new namespace when namespaces are on).
    work = spec["workdir"]
    try:
        if isolation["namespaces"]:
            _mount(libc, b"none", b"/", None, MS_REC | MS_PRIVATE, None)
            size = f"size={spec['disk_bytes']},mode=1777".encode()
            for d in ("/tmp", "/var/tmp", "/dev/shm"):
                if os.path.isdir(d):
                    _mount(libc, b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, size)
            keep = spec["keep_visible"]
            for d in HIDDEN:
                if os.path.isdir(d) and not any(k == d or k.startswith(d + "/") for k in keep):
                    _mount(libc, b"tmpfs", d.encode(), b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, b"size=4k")
            _mount(libc, b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
            os.makedirs(work, exist_ok=True)
        for name, text in spec["files"].items():
            with open(os.path.join(work, name), "w") as f:
                f.write(text)
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
            _become_program(spec, work)
        except BaseException as e:  # exec failed: report, never fall through into reaper code
            os.write(2, f"sandbox: cannot start program: {e}\n".encode())
            os._exit(127)
    os.close(0)
    while True:  # reap everything; return when the program itself ends
        pid, st = os.wait()
        if pid == program:
            break
    out = {"isolation": isolation}
    if os.WIFSIGNALED(st):
        out["signal"] = os.WTERMSIG(st)
    else:
        out["exit"] = os.WEXITSTATUS(st)
    _status(status_fd, out)
    os._exit(0)  # as PID 1 this tears the namespace down: every leftover process is killed


def _become_program(spec, work) -> None:
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
    if os.getuid() == 0:
        os.setgroups([])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
    os.setsid()
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


def _mount(libc, src, target, fstype, flags, data) -> None:
    if libc.mount(src, target, fstype, flags, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target.decode()}: {os.strerror(err)}")


def _status(fd: int, obj) -> None:
    os.write(fd, json.dumps(obj).encode())


if __name__ == "__main__":
    main()
