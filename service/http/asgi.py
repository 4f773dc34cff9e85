"""Pure-ASGI middleware in front of the routes: cheap enough to run on every request.

- `BodyLimit`: bodies over the limit get 413, by Content-Length or by counting a streamed body.
- `RequestMetrics`: requests by endpoint and status code, and their duration.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from attrx.service.http.errors import TooLarge, raw_error
from attrx.service.http.problems import MEDIA_TYPE, problem_bytes
from attrx.service.http.request_id import current

ENDPOINTS = {"/v1/extract", "/v1/extract/batch", "/v1/model", "/healthz", "/readyz", "/metrics", "/docs",
             "/openapi.json"}


async def send_problem(send, status: int, reason: str, message: str, headers: dict | None = None) -> None:
    """An error answer sent from ASGI middleware (the request id from the request's context)."""
    data = problem_bytes(status, reason, message, current.get())
    raw = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class Gate:
    """Admission at the door (`attrx.service.http.admission`), for the app's own `__call__`: a request that
    would take the server past its in-flight limit gets 429 at once, before its body is read,
    before any routing or middleware, so shedding load costs as little as possible."""

    PATHS = ("/v1/extract", "/v1/extract/batch")

    def __init__(self, admission, metrics):
        self.admission = admission
        self.message = f"{admission.limit} products are in flight, the server's limit; retry shortly"
        self._count = {p: (metrics.requests.labels(p, "429"), metrics.request_seconds.labels(p))
                       for p in self.PATHS}
        self._rejected = metrics.rejections.labels("overloaded")

    def admit(self, path: str):
        """A Ticket (one slot for /v1/extract), None (a batch, which takes its slots once its body
        is read), or False: refuse."""
        if path == "/v1/extract":
            return self.admission.try_acquire(1) or False
        return False if self.admission.full else None

    def record_refusal(self, path: str, seconds: float = 0.0) -> None:
        self._rejected.inc()
        counter, hist = self._count[path]
        counter.inc()
        hist.observe(seconds)

    def raw_429(self, request_id: str, *, close: bool) -> bytes:
        """The HTTP protocol's own refusal (attrx.service.http.frontend), as bytes for its socket."""
        return raw_error(429, "overloaded", self.message, close=close, request_id=request_id, retry_after=1)

    async def refuse(self, path: str, send) -> None:
        t0 = time.perf_counter()
        await send_problem(send, 429, "overloaded", self.message, {"Retry-After": "1"})
        self.record_refusal(path, time.perf_counter() - t0)


class BodyLimit:
    def __init__(self, app, limit: int, on_reject: Callable[[], None]):
        self.app, self.limit, self.on_reject = app, limit, on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            self.on_reject()
            e = TooLarge(self.limit)
            return await send_problem(send, 413, e.reason, e.message)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise TooLarge(self.limit)  # an ApiError: the route's error handler answers 413
            return msg

        async def tracked_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except TooLarge as e:  # raised outside a route (normally answered inside one)
            if not started:
                self.on_reject()
                await send_problem(send, 413, e.reason, e.message)


class RequestMetrics:
    def __init__(self, app, get_metrics: Callable):
        self.app, self.get_metrics = app, get_metrics
        self._children: dict = {}  # (endpoint, code) -> (counter, histogram): labels() per request is dear

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status = {"code": 500}
        t0 = time.perf_counter()

        async def tracked_send(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, tracked_send)
        finally:
            m = self.get_metrics()
            if m is not None:
                key = (endpoint, status["code"])
                pair = self._children.get(key)
                if pair is None:
                    pair = self._children[key] = (m.requests.labels(endpoint, str(key[1])),
                                                  m.request_seconds.labels(endpoint))
                pair[0].inc()
                pair[1].observe(time.perf_counter() - t0)
