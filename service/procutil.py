"""Helpers for the processes attrx starts (scoring workers, the server's front-ends and engine)."""

from __future__ import annotations

import os
import signal
import sys

SHM_DIR = "/dev/shm"
SHM_PREFIX = "attrx_"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None when no
    such process runs: with the pid, it names one process even where pids are reused (a container's 1)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # a zombie runs no more: its maker is gone
        return None
    return fields[19]


def maker_tag() -> str:
    """<pid>_<start time> of this process: names that carry it say which process made them."""
    return f"{os.getpid()}_{_start_time(os.getpid()) or 0}"


def segment_name(kind: str) -> str:
    """A shared-memory name that says which process made it: attrx_<pid>_<start time>_<kind>_<random>."""
    import secrets

    return f"{SHM_PREFIX}{maker_tag()}_{kind}_{secrets.token_hex(4)}"


def remove_orphans(folder: str = SHM_DIR, prefix: str = SHM_PREFIX) -> list[str]:
    """Remove what attrx processes that no longer run left in `folder` under names `prefix<pid>_<start
    time>_...`: shared-memory segments (a kill -9 of the whole process group leaves them, and in a
    pod's memory-backed /dev/shm they count against its memory until removed) and metrics folders.
    What a process that still runs made (another server) is left. Returns the names removed."""
    import shutil

    removed = []
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        parts = name[len(prefix):].split("_")
        if len(parts) < 3 or not parts[0].isdigit() or _start_time(int(parts[0])) == parts[1]:
            continue  # not ours, or its maker still runs
        path = os.path.join(folder, name)
        try:
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
            removed.append(name)
        except OSError:
            pass
    return removed


def close_shared_memory(shm, owner: bool) -> None:
    """Unmap a SharedMemory block, and remove its name when this process made it. A view still alive
    somewhere keeps the mapping until the process ends; a name already removed is no error."""
    try:
        shm.close()
    except BufferError:
        pass
    if owner:
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


def die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent goes away, so no child (a scoring
    worker, a server process) outlives an interrupted or killed parent."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = _parent_pid()
    orphan = os.getppid() != parent if parent is not None else os.getppid() == 1
    if orphan:  # the parent died before prctl took effect (this process was re-parented)
        os._exit(0)


def _parent_pid() -> int | None:
    """The pid of the multiprocessing parent that started this process (None: not started so). The
    test is not "is the parent pid 1": in a container the parent (`attrx serve`) is pid 1 itself,
    and every child would take itself for an orphan and leave."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None else None


def set_process_name(name: str) -> None:
    """Linux: the name `top`, `ps -o comm` and psutil show for this process (15 bytes at most)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a container's
    CPU limit), which `os.cpu_count()` ignores: on a 64-core node a pod limited to 2 CPUs gets 2."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(n, quota) if quota else n)


def _cgroup_quota() -> int | None:
    import math

    try:  # cgroup v2: "max 100000" or "200000 100000"
        with open("/sys/fs/cgroup/cpu.max") as f:
            q, p = f.read().split()[:2]
        return None if q == "max" else math.ceil(int(q) / int(p))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            q = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            p = int(f.read())
        return None if q <= 0 else math.ceil(q / p)
    except (OSError, ValueError):
        return None
