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
`restart_window_s` the server gives up and exits 1.

Progress, not presence (`attrx.service.engine.progress`): every process publishes its progress in
shared memory, and once a second the parent reads it. A front-end whose event loop has not ticked
for `stall_timeout_s` is killed and restarted as a dead one is. An engine that dies, or makes no
progress for `liveness_timeout_s` (it is then killed), is replaced in place: a new engine loads
the bundle and warms up while the front-ends answer 503 (Retry-After), then each front-end gets a
new link to it over its control pipe and serves again. Past `engine_restarts` replacements within
`restart_window_s` the server exits 1, for the orchestrator to restart whole.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import time
from multiprocessing.connection import wait

from attrx.service.serving.setup import (
    METRICS_PREFIX,
    Signals,
    bind,
    forget_metrics,
    metrics_dir,
    shm_warning,
)

log = logging.getLogger("attrx.serve")

STARTUP_TIMEOUT_S = 600.0
KEY_TABLE = 4096  # entries of the shared table of products in flight (a hint: a collision costs a "miss")


class Supervisor:
    def __init__(self, settings, log_level: str, access_log: bool):
        self.settings, self.log_level, self.access_log = settings, log_level, access_log
        self.ctx = mp.get_context("spawn")
        self.engine = None
        self.fronts: list = []
        self.arenas: list = []
        self.listens: list[socket.socket] = []
        self.restarts: list[float] = []  # when front-ends were restarted (monotonic)
        self.engine_restarts: list[float] = []  # when the engine was replaced (monotonic)
        self.front_ctl: list = []  # the parent's end of each front-end's control pipe
        self.progress = None
        self.ctl = None
        self.drained = None
        self.layout = self.info = None

    # -- startup ------------------------------------------------------------------------------
    def _start_engine(self, signals: Signals):
        from attrx.service.engine.process import engine_main

        self.ctl, child = self.ctx.Pipe()
        self.engine_ready = self.ctx.Event()
        self.engine = self.ctx.Process(target=engine_main, name="attrx-engine", daemon=False,
                                       args=(self.settings.model_dump(), child, self.engine_ready, self.progress.v))
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
        shm_warning(n * self.slots * self.layout.slot_bytes)
        # kept referenced here: a child opens them by name when it starts, after this returns
        self.admission, self.connections, self.warm = (shared_counter(self.ctx, n) for _ in range(3))
        self.keys = self.ctx.RawArray("Q", KEY_TABLE)  # products being worked on, for deduplication
        self.fronts, self.arenas, self.front_ctl = [None] * n, [None] * n, [None] * n
        for i in range(n):
            self._start_front(i)
        log.info("attrx: %d front-end processes (pids %s), inference process %d; shared memory %.1f MB",
                 n, ", ".join(str(p.pid) for p in self.fronts), self.engine.pid,
                 n * self.slots * self.layout.slot_bytes / 1e6)

    def _start_front(self, i: int, restarted: bool = False) -> None:
        """Front-end i on its listening socket, with a new arena and a new link to the engine."""
        from attrx.service.engine.client import EngineLink
        from attrx.service.engine.shm import Arena
        from attrx.service.http.frontend import frontend_main

        arena = self.arenas[i] = Arena(self.layout, self.slots)
        self.progress.clear_front(i)
        front_sock = self._engine_socket(i)
        mine, theirs = self.ctx.Pipe()
        self.front_ctl[i] = mine
        try:
            link = EngineLink(front_sock, self.listens[i], arena.name, self.slots, self.layout, self.admission,
                              self.connections, self.warm, len(self.listens), i, self.engine_ready, self.info,
                              restarted, self.keys, self.progress, theirs)
            p = self.ctx.Process(target=frontend_main, name=f"attrx-front-{i}",
                                 args=(self.settings.model_dump(), link, self.log_level, self.access_log))
            p.start()
            self.fronts[i] = p
        finally:  # the children hold their own copies
            front_sock.close()
            theirs.close()

    def _engine_socket(self, i: int) -> socket.socket:
        """A new link between the engine and front-end i: the engine gets its end (and the name of
        the front-end's arena) over the control pipe; the front-end's end is returned."""
        from multiprocessing.reduction import send_handle

        front_sock, engine_sock = socket.socketpair()
        try:
            self.ctl.send(("attach", i, self.arenas[i].name, self.slots))
            send_handle(self.ctl, engine_sock.fileno(), self.engine.pid)
        finally:
            engine_sock.close()
        return front_sock

    def run(self) -> int:
        s = self.settings
        try:
            self.listens = bind(s.host, s.port, s.workers)
        except OSError as e:
            log.error("attrx: cannot listen on %s:%d: %s", s.host, s.port, e.strerror or e)
            return 1
        from attrx.service.engine.progress import Progress

        signals = Signals()
        self.progress = Progress.create(self.ctx, s.workers)
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
    def _supervise(self, signals: Signals) -> int:
        while True:
            fronts = {p.sentinel: i for i, p in enumerate(self.fronts)}
            ready = wait([self.engine.sentinel, *fronts, signals.fd], timeout=0.5)
            if signals.fd in ready:
                return self._shutdown(None)
            if self.engine.sentinel in ready or self._engine_stalled():
                if not self._replace_engine(signals):
                    return self._shutdown(self.engine)
                continue
            self._kill_stalled_fronts()
            for fd in ready:
                if not self._restart(fronts[fd]):
                    return self._shutdown(self.fronts[fronts[fd]])

    def _engine_stalled(self) -> bool:
        """A warm engine that has made no progress for liveness_timeout_s is killed (and replaced)."""
        if not self.engine_ready.is_set() or not self.engine.is_alive():
            return False
        stalled = self.progress.engine_stalled_for(time.monotonic())
        if stalled <= self.settings.liveness_timeout_s:
            return False
        log.error("attrx: the inference process (pid %d) has made no progress for %.1f s (liveness bound %g s); "
                  "killing it", self.engine.pid, stalled, self.settings.liveness_timeout_s)
        self.engine.kill()
        self.engine.join()
        return True

    def _kill_stalled_fronts(self) -> None:
        """A front-end whose event loop has not ticked for stall_timeout_s is killed (its loop only
        parses and answers, so it is never legitimately that late, and each second more is a second
        its connections hang): its sentinel then restarts it as a dead one."""
        now = time.monotonic()
        bound = self.settings.stall_timeout_s
        for i, p in enumerate(self.fronts):
            stalled = self.progress.front_stalled_for(i, now)
            if stalled > bound and p.is_alive():
                log.error("attrx: %s (pid %d) has made no progress for %.1f s (bound %g s); killing it",
                          p.name, p.pid, stalled, bound)
                p.kill()

    def _replace_engine(self, signals: Signals) -> bool:
        """The engine died or was killed: a new one loads and warms up (the front-ends answer 503
        meanwhile), then every front-end gets a new link to it. False: one replacement too many."""
        s, old = self.settings, self.engine
        old.join()
        now = time.monotonic()
        self.engine_restarts = [t for t in self.engine_restarts if now - t < s.restart_window_s]
        if len(self.engine_restarts) >= s.engine_restarts:
            log.error("attrx: the inference process (pid %d) exited with status %s: %d engine failures within %g s, "
                      "past the limit of %d replacements; stopping the server", old.pid, old.exitcode,
                      len(self.engine_restarts) + 1, s.restart_window_s, s.engine_restarts)
            return False
        self.engine_restarts.append(now)
        log.error("attrx: the inference process (pid %d) exited with status %s; replacing it (%d of %d within %g s)",
                  old.pid, old.exitcode, len(self.engine_restarts), s.engine_restarts, s.restart_window_s)
        forget_metrics(old.pid)
        msg = self._start_engine(signals)
        if msg[0] != "layout" or msg[1] != self.layout:
            log.error("attrx: the replacement inference process failed: %s", msg[1] if msg[0] != "layout" else
                      "its slot layout differs")
            return False
        self.info = msg[2]  # its drift block: front-ends (and restarted ones) read the new one
        while not self.engine_ready.wait(1.0):
            if not self.engine.is_alive() or signals.count:
                return False
        self._relink_fronts()
        from attrx.service.procutil import remove_orphans

        remove_orphans()  # the dead engine's drift block: nobody writes it any more
        log.info("attrx: inference process %d serves in place of %d", self.engine.pid, old.pid)
        return True

    def _relink_fronts(self) -> None:
        from multiprocessing.reduction import send_handle

        for i, p in enumerate(self.fronts):
            if p is None or not p.is_alive():
                continue  # a dead one gets its link when it is restarted
            sock = self._engine_socket(i)
            try:
                self.front_ctl[i].send(("engine", self.info))
                send_handle(self.front_ctl[i], sock.fileno(), p.pid)
            except OSError:
                pass  # it is dying: its sentinel restarts it
            finally:
                sock.close()

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
        forget_metrics(p.pid)
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
    import tempfile

    from attrx.service.procutil import remove_orphans

    orphans = remove_orphans()
    if orphans:
        log.warning("attrx: removed %d shared-memory segments left by a server that was killed (%s)",
                    len(orphans), ", ".join(orphans[:4]) + (", ..." if len(orphans) > 4 else ""))
    remove_orphans(tempfile.gettempdir(), METRICS_PREFIX)  # their metrics folders too
    with metrics_dir():
        return Supervisor(settings, log_level, access_log).run()
