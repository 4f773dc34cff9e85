"""OpenTelemetry traces of a request through both processes (`attrx serve --tracing`, the extra
attrx[tracing]), exported over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (the SDK's own variables:
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, _HEADERS, OTEL_BSP_* and OTEL_TRACES_SAMPLER apply).

One trace per traced request (a share of them, `tracing_sample_ratio`, default 5%, unless the
caller's own traceparent header says its trace is sampled, or OTEL_TRACES_SAMPLER decides):

    POST /v1/extract                 front-end (server span; http.*, attrx.request_id)
    ├── attrx.decode                 front-end: image decoding and tokenising in the thread pool
    ├── attrx.queue                  inference process: from the batcher's queue to its batch's start
    └── attrx.batch                  inference process: the batch this product ran in (attrx.batch_size)
        └── attrx.inference          inference process: the model run of that batch

The front-end hands the request's context to the inference process in the product's slot (its W3C
traceparent beside the request id: attrx.service.engine.shm), so the engine's spans are children
of the request's span. The engine makes them after each batch from the times it measured, so a
batch costs no tracing calls while it runs. With tracing off (the default) nothing here is imported
by the serving path and no span is made.
"""

from __future__ import annotations

import time

SERVICE = "attrx"
_clock_offset_ns = time.time_ns() - time.monotonic_ns()  # monotonic seconds -> epoch nanoseconds


class TracingUnavailable(RuntimeError):
    pass


def setup(process: str, sample_ratio: float = 1.0):
    """A tracer for this process, exporting in batches over OTLP/HTTP. Sampling: OTEL_TRACES_SAMPLER
    where set, else parent-based at `sample_ratio` (the engine's spans always follow their request's
    decision: their parent is the request's span)."""
    import os

    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise TracingUnavailable("--tracing needs the extra: pip install 'attrx[tracing]'") from None
    sampler = None if os.environ.get("OTEL_TRACES_SAMPLER") else ParentBased(TraceIdRatioBased(sample_ratio))
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE, "attrx.process": process}),
                              sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return trace.get_tracer("attrx")


def epoch_ns(monotonic_s: float) -> int:
    return int(monotonic_s * 1e9) + _clock_offset_ns


def traceparent() -> str:
    """The current span's W3C traceparent ('' without a valid, sampled span: the engine then makes none)."""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _parent(tp: str):
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": tp})


def incoming(headers) -> object | None:
    """The caller's trace context from a request's traceparent/tracestate headers (None: none sent)."""
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in (b"traceparent", b"tracestate")}
    if "traceparent" not in carrier:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier)


def engine_spans(tracer, tp: str, request_id: str, enqueued: float, start: float, end: float,
                 run: tuple[float, float] | None, batch_size: int) -> None:
    """The inference process's spans of one product, children of its request's span (times: monotonic s)."""
    if not tp:
        return
    from opentelemetry import trace

    ctx = _parent(tp)
    attrs = {"attrx.request_id": request_id}
    q = tracer.start_span("attrx.queue", context=ctx, start_time=epoch_ns(enqueued), attributes=attrs)
    q.end(end_time=epoch_ns(start))
    b = tracer.start_span("attrx.batch", context=ctx, start_time=epoch_ns(start),
                          attributes={**attrs, "attrx.batch_size": batch_size})
    if run is not None:
        inner = trace.set_span_in_context(b)
        tracer.start_span("attrx.inference", context=inner, start_time=epoch_ns(run[0])).end(end_time=epoch_ns(run[1]))
    b.end(end_time=epoch_ns(end))


def split_tag(tag: str) -> tuple[str, str]:
    """A slot's tag -> (request id, traceparent)."""
    rid, _, tp = tag.partition("|")
    return rid, tp
