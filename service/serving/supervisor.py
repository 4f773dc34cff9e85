"""`attrx serve`: one inference process and N front-end processes on one port.

    parent (this module)        binds the port, owns the shared memory, forwards signals
    ├── attrx-engine            the model and the dynamic batcher (`attrx.service.engine.process`)
    └── attrx-front-0..N-1      uvicorn + FastAPI: HTTP, parsing, image decoding, tokenising,
                                answers (`attrx.service.http.frontend.frontend_main`, `attrx.service.http.app`)

Front-ends hand decoded products to the engine through shared memory, so batches form across all
of them and the GIL of one process no longer bounds the server. What docs/http-api.md promises holds for
the whole server: the admission limit is one counter in shared memory, the metrics are one view
(prometheus_client's multiprocess mode), and a drain is driven from here: on SIGTERM/SIGINT the
front-ends stop being ready and answer what they admitted while the engine runs its queue without
waiting for full batches; the engine stops last.

A front-end that dies is restarted alone while the others keep serving: the parent zeroes its
entries of the shared counts (its work died with it), gives it a new arena and a new link to the
engine (the socket passed over the control pipe), and starts it on the same listening socket,
which the parent keeps open: connections the kernel hands that socket meanwhile wait in its
backlog for the replacement, which takes them once warm, a wait bounded by one front-end's start
(1.0-1.3 s here, under load) and by the restart limit. Past `front_end_restarts` restarts within
`restart_window_s` the server gives up and exits 1. The engine's death stops the server (exit 1):
the orchestrator restarts it whole.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import time
from contextlib import contextmanager
from multiprocessing.connection import wait

log = logging.getLogger("attrx.serve")

STARTUP_TIMEOUT_S = 600.0
KEY_TABLE = 4096  # entries of the shared table of products in flight (a hint: a collision costs a "miss")


@contextmanager
def _metrics_dir():
    """PROMETHEUS_MULTIPROC_DIR for the children: the user's (emptied first) or a temporary one."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.remove(os.path.join(given, name))
        yield given
        return
    path = tempfile.mkdtemp(prefix="attrx-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield path
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


def _bind(host: str, port: int, n: int) -> list[socket.socket]:
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


class _Signals:
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


def _shm_warning(bytes_needed: int) -> None:
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return
    if free < bytes_needed:
        log.warning("attrx: /dev/shm has %.1f MB free and the front-ends' slots need %.1f MB: lower --workers "
                    "or --max-in-flight, or give the container more shared memory", free / 1e6, bytes_needed / 1e6)


def _forget_metrics(pid: int) -> None:
    """A dead process's live gauges (ready, queue depth) leave the metrics view; its counters stay."""
    from prometheus_client import multiprocess

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        multiprocess.mark_process_dead(pid, path)


class Supervisor:
    def __init__(self, settings, log_level: str, access_log: bool):
        self.settings, self.log_level, self.access_log = settings, log_level, access_log
        self.ctx = mp.get_context("spawn")
        self.engine = None
        self.fronts: list = []
        self.arenas: list = []
        self.listens: list[socket.socket] = []
        self.restarts: list[float] = []  # when front-ends were restarted (monotonic)
        self.ctl = None
        self.drained = None
        self.layout = self.info = None

    # -- startup ------------------------------------------------------------------------------
    def _start_engine(self, signals: _Signals):
        from attrx.service.engine.process import engine_main

        self.ctl, child = self.ctx.Pipe()
        self.engine_ready = self.ctx.Event()
        self.engine = self.ctx.Process(target=engine_main, name="attrx-engine", daemon=False,
                                       args=(self.settings.model_dump(), child, self.engine_ready))
        self.engine.start()
        child.close()
        end = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < end:
            ready = wait([self.ctl, self.engine.sentinel, signals.fd], timeout=1.0)
            if self.ctl in ready:
                try:
                    return self.ctl.recv()
                except EOFError:
                    return ("error", "the inference process exited while loading the bundle")
            if ready:
                return ("error", "interrupted" if signals.count else "the inference process exited while loading")
        return ("error", f"the inference process did not load the bundle within {STARTUP_TIMEOUT_S:g} s")

    @property
    def slots(self) -> int:
        return self.settings.max_in_flight + 8  # every admitted product, and a few cancelled ones not yet answered

    def _start_fronts(self) -> None:
        from attrx.service.http.admission import shared_counter

        n = self.settings.workers
        _shm_warning(n * self.slots * self.layout.slot_bytes)
        # kept referenced here: a child opens them by name when it starts, after this returns
        self.admission, self.connections, self.warm = (shared_counter(self.ctx, n) for _ in range(3))
        self.keys = self.ctx.RawArray("Q", KEY_TABLE)  # products being worked on, for deduplication
        self.fronts, self.arenas = [None] * n, [None] * n
        for i in range(n):
            self._start_front(i)
        log.info("attrx: %d front-end processes (pids %s), inference process %d; shared memory %.1f MB",
                 n, ", ".join(str(p.pid) for p in self.fronts), self.engine.pid,
                 n * self.slots * self.layout.slot_bytes / 1e6)

    def _start_front(self, i: int, restarted: bool = False) -> None:
        """Front-end i on its listening socket, with a new arena and a new link to the engine."""
        from multiprocessing.reduction import send_handle

        from attrx.service.engine.client import EngineLink
        from attrx.service.engine.shm import Arena
        from attrx.service.http.frontend import frontend_main

        arena = self.arenas[i] = Arena(self.layout, self.slots)
        front_sock, engine_sock = socket.socketpair()
        try:
            self.ctl.send(("attach", i, arena.name, self.slots))
            send_handle(self.ctl, engine_sock.fileno(), self.engine.pid)
            link = EngineLink(front_sock, self.listens[i], arena.name, self.slots, self.layout, self.admission,
                              self.connections, self.warm, len(self.listens), i, self.engine_ready, self.info,
                              restarted, self.keys)
            p = self.ctx.Process(target=frontend_main, name=f"attrx-front-{i}",
                                 args=(self.settings.model_dump(), link, self.log_level, self.access_log))
            p.start()
            self.fronts[i] = p
        finally:  # the children hold their own copies
            front_sock.close()
            engine_sock.close()

    def run(self) -> int:
        s = self.settings
        try:
            self.listens = _bind(s.host, s.port, s.workers)
        except OSError as e:
            log.error("attrx: cannot listen on %s:%d: %s", s.host, s.port, e.strerror or e)
            return 1
        signals = _Signals()
        try:
            msg = self._start_engine(signals)
            if msg[0] != "layout":
                log.error("attrx: cannot serve: %s", msg[1])
                self._stop_engine(0.0)
                return 1
            self.layout, self.info = msg[1], msg[2]
            self._start_fronts()
            return self._supervise(signals)
        finally:
            signals.restore()
            for a in self.arenas:
                if a is not None:
                    a.close()
            for sock in self.listens:
                sock.close()

    # -- running, restarting and stopping -----------------------------------------------------
    def _supervise(self, signals: _Signals) -> int:
        while True:
            fronts = {p.sentinel: i for i, p in enumerate(self.fronts)}
            ready = wait([self.engine.sentinel, *fronts, signals.fd])
            if signals.fd in ready:
                return self._shutdown(None)
            if self.engine.sentinel in ready:
                self.engine.join()
                log.error("attrx: the inference process (pid %d) exited with status %s; stopping the server",
                          self.engine.pid, self.engine.exitcode)
                return self._shutdown(self.engine)
            for fd in ready:
                if not self._restart(fronts[fd]):
                    return self._shutdown(self.fronts[fronts[fd]])

    def _restart(self, i: int) -> bool:
        """Front-end i died: start a replacement, unless it is one restart too many. False: give up."""
        s, p = self.settings, self.fronts[i]
        p.join()
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < s.restart_window_s]
        if len(self.restarts) >= s.front_end_restarts:
            log.error("attrx: %s (pid %d) exited with status %s: %d front-end failures within %g s, past the "
                      "limit of %d restarts; stopping the server", p.name, p.pid, p.exitcode, len(self.restarts) + 1,
                      s.restart_window_s, s.front_end_restarts)
            return False
        self.restarts.append(now)
        log.error("attrx: %s (pid %d) exited with status %s; restarting it (%d of %d restarts within %g s)",
                  p.name, p.pid, p.exitcode, len(self.restarts), s.front_end_restarts, s.restart_window_s)
        # its work died with it: its entries of the shared counts go back to zero
        self.admission[i] = self.connections[i] = self.warm[i] = 0
        _forget_metrics(p.pid)
        self.arenas[i].close()  # the engine keeps its own mapping until its last item of it is done
        self._start_front(i, restarted=True)
        return True

    def _shutdown(self, failed) -> int:
        s = self.settings
        if self.engine.is_alive():
            self._send(("flush",))
        for p in self.fronts:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        end = time.monotonic() + s.drain_timeout_s + 10
        for p in self.fronts:
            p.join(max(0.1, end - time.monotonic()))
            if p.is_alive():
                log.error("attrx: %s did not stop in time; killing it", p.name)
                p.kill()
                p.join()
        self._stop_engine(max(0.1, end - time.monotonic()))
        codes = [p.exitcode for p in self.fronts]
        if failed is None and all(c == 0 for c in codes) and self.drained:
            return 0
        return 3 if 3 in codes else 1

    def _send(self, msg) -> None:
        try:
            self.ctl.send(msg)
        except OSError:
            pass

    def _stop_engine(self, timeout: float) -> None:
        if self.engine is None:
            return
        if self.engine.is_alive():
            self._send(("stop", timeout))
            if self.ctl.poll(timeout + 5):
                try:
                    self.drained = self.ctl.recv()[1]
                except (EOFError, OSError):
                    pass
        self.engine.join(5)
        if self.engine.is_alive():
            self.engine.kill()
            self.engine.join()


def serve(settings, *, log_level: str = "info", access_log: bool = False) -> int:
    """Run `attrx serve` until SIGTERM/SIGINT. Exit status: 0 drained cleanly, 1 not (or a process
    died), 3 startup failed."""
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(levelname)s:     %(message)s")
    with _metrics_dir():
        return Supervisor(settings, log_level, access_log).run()
