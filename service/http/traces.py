"""The front-end's part of `attrx serve --tracing` (attrx.service.telemetry.tracing): the request's
server span, the decoding span, and the tag that carries the request's context to the engine."""

from __future__ import annotations

import random

from attrx.service.http.request_id import current


class Tracer:
    """The SDK's tracer and the share of requests without a sampled caller to trace. The share is
    decided here before any span is made (one random draw: an untraced request then costs no span,
    no context, no sampler call), unless OTEL_TRACES_SAMPLER is set, which then decides alone."""

    def __init__(self, sdk_tracer, ratio: float):
        import os

        self.sdk, self.ratio = sdk_tracer, 1.0 if os.environ.get("OTEL_TRACES_SAMPLER") else ratio

    def start_span(self, name: str):
        return self.sdk.start_span(name)


def tracer_for(settings, link) -> Tracer | None:
    """This front-end's tracer; None with tracing off, or for an app only read for its schema."""
    if not settings.tracing or link is None:
        return None
    from attrx.service.telemetry.tracing import setup

    # the SDK samples every root that reaches it (the share is drawn in traced_call) and follows a caller's
    return Tracer(setup(f"front-end-{link.index}", 1.0), settings.tracing_sample_ratio)


def engine_tag(tracer) -> str:
    """What the product's slot carries to the engine: its request id, and its traceparent when traced."""
    if tracer is None:
        return current.get()
    from attrx.service.telemetry.tracing import traceparent

    tp = traceparent()
    return f"{current.get()}|{tp}" if tp else current.get()


def span_until(tracer, name: str, fut) -> None:
    """A child span of the current one, from now until the future (a thread pool's work) is done."""
    from opentelemetry import trace

    if trace.get_current_span().is_recording():  # a request not sampled: nothing to make
        span = tracer.start_span(name)
        fut.add_done_callback(lambda _: span.end())


async def traced_call(tracer: Tracer, app_call, scope, receive, send) -> None:
    """The request through `app_call` inside its server span (method, route, status, request id), or
    without one when it is not sampled."""
    from attrx.service.telemetry.tracing import incoming

    caller = incoming(scope["headers"])
    if caller is None and random.random() >= tracer.ratio:
        return await app_call(scope, receive, send)
    from opentelemetry.trace import SpanKind, Status, StatusCode

    attrs = {"http.request.method": scope["method"], "http.route": scope["path"], "attrx.request_id": current.get()}
    with tracer.sdk.start_as_current_span(f"{scope['method']} {scope['path']}", context=caller,
                                          kind=SpanKind.SERVER, attributes=attrs) as span:
        async def send_status(msg):
            if msg["type"] == "http.response.start":
                span.set_attribute("http.response.status_code", msg["status"])
                if msg["status"] >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            await send(msg)

        await app_call(scope, receive, send_status)
