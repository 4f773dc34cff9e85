"""Health that measures progress, not presence: this front-end's event-loop heartbeat, the stall
checks behind `/readyz`, `/livez` and the 503 for new work, and switching to a replacement engine
(`attrx.service.engine.progress` holds the shared fields; `attrx.service.serving.supervisor` acts on them)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable

from fastapi.responses import JSONResponse, Response

from attrx.service.engine.client import EngineClient, EngineLink
from attrx.service.engine.progress import TICK_S
from attrx.service.http.drift_report import FrontDrift
from attrx.service.http.errors import problem_response, retry_later
from attrx.service.http.state import State
from attrx.service.settings import ServeSettings

log = logging.getLogger("uvicorn.error")


class Health:
    def __init__(self, settings: ServeSettings, link: EngineLink | None):
        self.settings, self.link = settings, link
        self.lag = self.last_beat = 0.0  # this event loop's last tick: how late it came, and when

    def start(self, loaded: Callable[[], State]) -> asyncio.Task:
        """The heartbeat task, and a thread that waits for a replacement engine's link."""
        link = self.link
        assert link is not None
        if link.control is not None:
            threading.Thread(target=self._new_engines, args=(asyncio.get_running_loop(), link.control, loaded),
                             name="attrx-engine-links", daemon=True).start()
        return asyncio.create_task(self._heartbeat())

    def _new_engines(self, loop: asyncio.AbstractEventLoop, control, loaded: Callable[[], State]) -> None:
        """A thread: the supervisor replaced the engine and sends this front-end's end of a link to
        the new one; the event loop switches to it."""
        from multiprocessing.reduction import recv_handle

        while True:
            try:
                msg = control.recv()
                sock = socket.socket(fileno=recv_handle(control)) if msg[0] == "engine" else None
            except (EOFError, OSError):
                return  # the supervisor is gone, or this process is stopping
            if sock is not None:
                loop.call_soon_threadsafe(self._swap_engine, loaded(), sock, msg[1] if len(msg) > 1 else None)

    def _swap_engine(self, st: State, sock: socket.socket, info: dict | None = None) -> None:
        old = st.engine
        old.close()  # gone already: its unanswered requests were answered 503
        st.engine = EngineClient(sock, old.arena)
        st.engine.start()
        if st.drift is not None and info is not None and info.get("drift"):
            # the new engine keeps its own window and reference: read its block, not the dead one's
            stale, st.drift = st.drift, FrontDrift(st.bundle.manifest, info["drift"], self.settings.drift_reference)
            stale.close()
        log.info("attrx: front-end %d linked to the new inference process", self.link.index if self.link else -1)

    async def _heartbeat(self) -> None:
        """This front-end's event loop ticks in shared memory, with how late each tick came: the
        supervisor restarts a front-end whose ticks stop, and a late loop answers /readyz 503."""
        link = self.link
        if link is None or link.progress is None:
            return
        progress = link.progress
        expected = time.monotonic()
        while True:
            now = self.last_beat = time.monotonic()
            self.lag = max(0.0, now - expected)
            progress.front_beat(link.index, now, self.lag)
            expected = now + TICK_S
            await asyncio.sleep(TICK_S)

    def stalled_for(self, st: State) -> tuple[float, str]:
        """How long this server has gone without progress, and where: the engine (work waiting and
        no batch completing, or no heartbeat) or this front-end's event loop (late)."""
        progress = st.link.progress
        if progress is None:
            return 0.0, ""
        now = time.monotonic()
        engine = progress.engine_stalled_for(now, st.engine.waiting_since)
        loop = max(self.lag, now - self.last_beat - TICK_S) if self.last_beat else 0.0
        return (engine, "the inference process") if engine >= loop else (loop, "this front-end's event loop")

    def check_progress(self, st: State) -> None:
        """503 (Retry-After) for new work while the engine or this front-end is stalled."""
        if st.link.progress is None:
            return
        stalled, where = self.stalled_for(st)
        bound = max(st.link.progress.bound, self.settings.stall_timeout_s)
        if stalled > bound:
            raise retry_later(503, "stalled", f"{where} has made no progress for {stalled:.1f} s "
                                              f"(the bound is {bound:.1f} s); retry shortly")

    def livez(self, st: State | None) -> Response:
        """503 once the engine or this front-end has made no progress for liveness_timeout_s (an
        orchestrator restarts the pod; the supervisor replaces the process meanwhile). Loading,
        warming up and draining are alive."""
        if st is None:
            return JSONResponse({"status": "alive", "stalled_s": 0.0})
        stalled, where = self.stalled_for(st)
        limit = self.settings.liveness_timeout_s
        if stalled > limit:
            return problem_response(503, "stalled", f"{where} has made no progress for {stalled:.1f} s "
                                                   f"(the liveness bound is {limit:g} s)")
        return JSONResponse({"status": "alive", "stalled_s": round(stalled, 3)})
