"""The front-end's part of `attrx serve --tracing` (attrx.service.telemetry.tracing): the request's
server span, the decoding span, and the tag that carries the request's context to the engine."""

from __future__ import annotations

from attrx.service.http.request_id import current

TRACED = ("/v1/extract", "/v1/extract/batch")


def tracer_for(settings, link):
    """This front-end's tracer; None with tracing off, or for an app only read for its schema."""
    if not settings.tracing or link is None:
        return None
    from attrx.service.telemetry.tracing import setup

    return setup(f"front-end-{link.index}")


def engine_tag(tracer) -> str:
    """What the product's slot carries to the engine: its request id, and its traceparent when traced."""
    if tracer is None:
        return current.get()
    from attrx.service.telemetry.tracing import traceparent

    return f"{current.get()}|{traceparent()}"


def span_until(tracer, name: str, fut) -> None:
    """A child span of the current one, from now until the future (a thread pool's work) is done."""
    span = tracer.start_span(name)
    fut.add_done_callback(lambda _: span.end())


async def traced_call(tracer, app_call, scope, receive, send) -> None:
    """The request through `app_call` inside its server span (method, route, status, request id)."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    attrs = {"http.request.method": scope["method"], "http.route": scope["path"], "attrx.request_id": current.get()}
    with tracer.start_as_current_span(f"{scope['method']} {scope['path']}", kind=SpanKind.SERVER,
                                      attributes=attrs) as span:
        async def send_status(msg):
            if msg["type"] == "http.response.start":
                span.set_attribute("http.response.status_code", msg["status"])
                if msg["status"] >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            await send(msg)

        await app_call(scope, receive, send_status)
