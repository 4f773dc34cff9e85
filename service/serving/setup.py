"""What `attrx serve`'s parent process sets up around its children: the metrics folder, the
listening sockets, the signals it waits on, and the checks and clean-up of shared memory and
metrics files (`attrx.service.serving.supervisor` runs the children)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
from contextlib import contextmanager

from attrx.service.procutil import maker_tag

log = logging.getLogger("attrx.serve")

METRICS_PREFIX = "attrx-metrics-"


@contextmanager
def metrics_dir():
    """PROMETHEUS_MULTIPROC_DIR for the children: the user's (emptied first) or a temporary one."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.remove(os.path.join(given, name))
        yield given
        return
    path = tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{maker_tag()}_")  # its maker named: found if orphaned
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield path
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


def bind(host: str, port: int, n: int) -> list[socket.socket]:
    """n listening sockets on one port, one per front-end, with SO_REUSEPORT: the kernel spreads
    new connections evenly over them. One socket shared by all (where SO_REUSEPORT is missing)
    lets whichever process wakes first accept, and one front-end took 3 in 4 connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    if reuse_port and port:
        # SO_REUSEPORT would let a second attrx on this port share its traffic without a word:
        # a plain bind first fails if anything holds the port
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    socks: list[socket.socket] = []
    try:
        for _ in range(n if reuse_port else 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the rest join the port the first one got
            sock.set_inheritable(True)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks * n if not reuse_port else socks


class Signals:
    """SIGTERM/SIGINT noted and turned into a readable pipe end, to wait on with the children."""

    def __init__(self):
        self.count = 0
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, sig, frame) -> None:
        self.count += 1
        try:
            os.write(self._w, b"x")
        except BlockingIOError:
            pass

    @property
    def fd(self) -> int:
        return self._r

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        os.close(self._r)
        os.close(self._w)


def shm_warning(bytes_needed: int) -> None:
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return
    if free < bytes_needed:
        log.warning("attrx: /dev/shm has %.1f MB free and the front-ends' slots need %.1f MB: lower --workers "
                    "or --max-in-flight, or give the container more shared memory", free / 1e6, bytes_needed / 1e6)


def forget_metrics(pid: int) -> None:
    """A dead process's live gauges (ready, queue depth) leave the metrics view; its counters stay."""
    from prometheus_client import multiprocess

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        multiprocess.mark_process_dead(pid, path)
