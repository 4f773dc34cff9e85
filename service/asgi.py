"""Pure-ASGI middleware in front of the routes: cheap enough to run on every request.

- `BodyLimit`: bodies over the limit get 413, by Content-Length or by counting a streamed body.
- `AdmissionGate`: a request that would take the server past its in-flight limit gets 429 at once,
  before its body is read or any work is queued (`service.admission`).
- `RequestMetrics`: requests by endpoint and status code, and their duration.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from service.errors import TooLarge, error_body

ENDPOINTS = {"/v1/extract", "/v1/extract/batch", "/v1/model", "/healthz", "/readyz", "/metrics", "/docs",
             "/openapi.json"}


async def send_json(send, status: int, body: dict, headers: dict | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


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
            return await send_json(send, 413, error_body(e.reason, e.message))
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
                await send_json(send, 413, error_body(e.reason, e.message))


class AdmissionGate:
    """`get_admission()` returns the running server's Admission, or None before it is loaded."""

    def __init__(self, app, get_admission: Callable, on_reject: Callable[[], None]):
        self.app, self.get_admission, self.on_reject = app, get_admission, on_reject

    async def __call__(self, scope, receive, send):
        path = scope.get("path")
        if scope["type"] != "http" or path not in ("/v1/extract", "/v1/extract/batch"):
            return await self.app(scope, receive, send)
        adm = self.get_admission()
        if adm is None:  # not loaded yet: the route answers 503
            return await self.app(scope, receive, send)
        # /v1/extract takes its one slot here; a batch takes one per product once its body is read
        ticket = adm.try_acquire(1) if path == "/v1/extract" else None
        if ticket is None and (path == "/v1/extract" or adm.full):
            self.on_reject()
            return await send_json(send, 429, error_body(
                "overloaded", f"{adm.limit} products are in flight, the server's limit; retry shortly"),
                {"Retry-After": "1"})
        scope["attrx.ticket"] = ticket
        try:
            await self.app(scope, receive, send)
        finally:
            if ticket is not None:
                ticket.close()


class RequestMetrics:
    def __init__(self, app, get_metrics: Callable):
        self.app, self.get_metrics = app, get_metrics

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
                m.requests.labels(endpoint, str(status["code"])).inc()
                m.request_seconds.labels(endpoint).observe(time.perf_counter() - t0)
