"""uvicorn, hardened for slow and vanished clients, with a drain that answers and exits cleanly.

- `GuardedHttpProtocol` (httptools) adds what uvicorn lacks: a connection must send a request's
  headers within `header_timeout_s` and its body within `body_timeout_s` (else 408 and close,
  checked by a sweep over the connections 4 times a second), and
  connections beyond `max_connections` are answered 503 and closed. Idle keep-alive connections
  are closed by uvicorn's own `timeout_keep_alive`.
- Admission control runs in the protocol too: a request past the in-flight limit is answered 429
  straight from the socket callback that parsed its headers (the cheapest place to shed load).
- `AttrxServer` tells the app the moment SIGTERM/SIGINT arrives (readiness turns 503, the drain
  clock starts, so requests that cannot finish in time get 503 instead of being cancelled), and
  exits with status 0 after a clean drain instead of re-raising the signal.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from typing import cast

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from attrx.service.http.admission import Admission
from attrx.service.http.errors import raw_error
from attrx.service.http.request_id import from_headers, new_id, uvicorn_log_config

log = logging.getLogger("uvicorn.error")


class _Answered:
    """Stands in for uvicorn's request cycle once a request was answered at the door."""

    response_started = response_complete = True
    disconnected = False

    def __init__(self):
        import asyncio

        self.message_event = asyncio.Event()


class GuardedHttpProtocol(HttpToolsProtocol):
    """Configured through class attributes by `guarded_protocol()`."""

    gate_source: Callable | None = None
    header_timeout_s = 10.0
    body_timeout_s = 30.0
    max_connections = 1024
    connections_limit: Admission | None = None  # an Admission (shared by every front-end process: the limit is the server's)
    on_close: Callable[[str], None] | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline: float | None = None
        self._what, self._begun = "", False
        limit = type(self).connections_limit
        assert limit is not None, "guarded_protocol() sets the connection limit"
        self._conn_ticket = limit.try_acquire(1)
        if self._conn_ticket is None:
            self._close("too_many_connections", raw_error(
                503, "too_many_connections", f"the server holds {self.max_connections} connections, its limit; "
                "retry shortly", close=True, request_id=new_id(), retry_after=1))
            return
        self._arm(self.header_timeout_s, "slow_headers")
        _Sweeper.ensure(self.loop, self.connections)

    def connection_lost(self, exc) -> None:
        self._deadline = None
        if self._conn_ticket is not None:
            self._conn_ticket.close()
            self._conn_ticket = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        if self._deadline is None:  # a later request on a keep-alive connection
            self._arm(self.header_timeout_s, "slow_headers")

    def on_headers_complete(self) -> None:
        if self._refused_at_door():
            return
        super().on_headers_complete()
        self._arm(self.body_timeout_s, "slow_body")

    def _refused_at_door(self) -> bool:
        """Admission (`attrx.service.http.asgi.Gate`) decided here, as soon as the headers are parsed: a refusal
        is one pre-built 429 written to the socket, with no ASGI task, no routing, no middleware.
        An admitted request carries its ticket into the ASGI scope."""
        source = type(self).gate_source
        gate = source() if source is not None else None
        if gate is None or (self.cycle is not None and not self.cycle.response_complete) or self.parser.should_upgrade():
            return False  # not loaded yet, a pipelined request, an upgrade: the app's own gate decides
        if self.parser.get_method() != b"POST" or not self.url.startswith(b"/v1/extract"):
            return False  # the common case decided without parsing the URL (uvicorn parses it next)
        path = httptools.parse_url(self.url).path.decode("latin-1")
        if path not in gate.PATHS:
            return False
        ticket = gate.admit(path)
        if ticket is not False:
            scope = cast(dict, self.scope)  # ASGI scopes carry extensions: attrx's admission
            scope["attrx.admitted"], scope["attrx.ticket"] = True, ticket
            return False
        keep = self.parser.should_keep_alive()
        self.transport.write(gate.raw_429(from_headers(self.headers), close=not keep))
        gate.record_refusal(path)
        self.cycle = _Answered()  # type: ignore[assignment]  # duck-typed: the body that follows is read and dropped
        self._deadline = None
        if keep:
            self.on_response_complete()  # keep-alive timer, pipelined requests: as after any answer
        else:
            self.transport.close()
        return True

    def on_message_complete(self) -> None:
        self._deadline = None
        self._begun = False
        super().on_message_complete()

    def _arm(self, seconds: float, what: str) -> None:
        # a deadline the sweeper checks, not a timer per phase: cheaper per request
        self._deadline, self._what = self.loop.time() + seconds, what

    def _expired(self, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answered = cycle is not None and cycle.response_started and not cycle.response_complete
        if what == "slow_headers" and not self._begun:
            return self._close("slow_client", b"")  # never sent a byte of a request: just close
        if answered:
            return self._close("slow_client", b"")
        limit = self.header_timeout_s if what == "slow_headers" else self.body_timeout_s
        part = "headers" if what == "slow_headers" else "body"
        headers = self.headers if what == "slow_body" else []  # the headers of this request, once complete
        self._close("slow_client", raw_error(
            408, "slow_client", f"the request's {part} did not arrive within {limit:g} s", close=True,
            request_id=from_headers(headers)))

    def _close(self, reason: str, response: bytes) -> None:
        if response:
            self.transport.write(response)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's receive() now answers http.disconnect
            self.cycle.message_event.set()
        self.transport.close()
        hook = type(self).on_close
        if hook is not None:
            hook(reason)


class _Sweeper:
    """One task per event loop that closes connections past their deadline, 4 times a second."""

    _tasks: dict = {}
    INTERVAL_S = 0.25

    @classmethod
    def ensure(cls, loop, connections: set) -> None:
        task = cls._tasks.get(loop)
        if task is None or task.done():
            cls._tasks[loop] = loop.create_task(cls._run(loop, connections))

    @staticmethod
    async def _run(loop, connections: set) -> None:
        import asyncio

        while True:
            await asyncio.sleep(_Sweeper.INTERVAL_S)
            now = loop.time()
            for conn in list(connections):
                deadline = getattr(conn, "_deadline", None)
                if deadline is not None and now >= deadline:
                    conn._expired(conn._what)


def guarded_protocol(header_timeout_s: float, body_timeout_s: float, max_connections: int,
                     on_close: Callable[[str], None] | None = None,
                     gate_source: Callable | None = None, connections_limit=None) -> type[GuardedHttpProtocol]:
    return type("AttrxHttpProtocol", (GuardedHttpProtocol,), {
        "header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s,
        "max_connections": max_connections,
        "connections_limit": connections_limit if connections_limit is not None else Admission(max_connections),
        "on_close": staticmethod(on_close) if on_close else None,
        "gate_source": staticmethod(gate_source) if gate_source else None})


class AttrxServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_exit_signal: Callable[[], None]):
        super().__init__(config)
        self._on_exit_signal = on_exit_signal
        self._loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig, frame) -> None:
        # A signal handler runs between two bytecodes of whatever the main thread was doing. The
        # drain start updates metrics, whose (non-reentrant) locks the interrupted code may hold:
        # run it on the event loop instead (call_soon_threadsafe only appends and writes a byte).
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_exit_signal)
        super().handle_exit(sig, frame)

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        with self.capture_signals():
            await self._serve(sockets)
            # shut down as asked, after draining: exit normally rather than re-raising the signal
            self._captured_signals.clear()


def raise_open_files_limit(wanted: int) -> None:
    """Each connection is a file descriptor: lift the soft limit towards the hard one if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < wanted:
        log.warning("attrx: open-files limit is %d, below --max-connections + 64 = %d", new, wanted)


def frontend_main(settings_data: dict, link, log_level: str, access_log: bool) -> None:
    """A front-end process (spawned by `attrx.service.serving.supervisor`): uvicorn on its socket of the port. Exit
    status 0: drained cleanly; 1: not; 3: startup failed."""
    import sys

    from attrx.service.http.app import create_app
    from attrx.service.procutil import die_with_parent, set_process_name
    from attrx.service.settings import ServeSettings

    die_with_parent()
    set_process_name(f"attrx-front-{link.index}")
    settings = ServeSettings(**settings_data)
    app = create_app(settings, link)
    svc = app.state.service
    raise_open_files_limit(settings.max_connections + 64)
    protocol = guarded_protocol(settings.header_timeout_s, settings.body_timeout_s, settings.max_connections,
                                on_close=svc.reject, gate_source=lambda: svc.gate,
                                connections_limit=Admission(settings.max_connections,
                                                            shared=(link.connections, link.index)))
    config = uvicorn.Config(
        app, log_level=log_level, access_log=access_log, http=protocol, log_config=uvicorn_log_config(),
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]  # uvicorn takes seconds as a float
        # the app answers what cannot finish by the drain deadline itself (503); uvicorn's own
        # cancellation, which would answer 500, only comes after it
        timeout_graceful_shutdown=settings.drain_timeout_s + 5,  # type: ignore[arg-type]  # (float, as above)
    )
    server = AttrxServer(config, on_exit_signal=svc.begin_drain)
    server.run(sockets=[link.listen])
    st = svc.state
    sys.exit(3 if st is None else 0 if st.drained else 1)
