"""A minimal OTLP/HTTP trace receiver on 127.0.0.1, for the tracing test and benchmark: it takes what an
OpenTelemetry SDK's OTLP/HTTP exporter sends (POST /v1/traces, protobuf), keeps the spans in memory and
answers as a collector does. It is no collector (no processing, no export onwards): a real endpoint
for the exporter to talk to, so that tracing is exercised over the wire protocol it uses in production.

    with OtlpSink() as sink:      # OTEL_EXPORTER_OTLP_ENDPOINT=sink.url
        ...
        sink.spans                # [{"name", "trace_id", "span_id", "parent", "start", "end", "attributes", "resource"}]
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "int_value", "double_value", "bool_value") else str(v)


def _attrs(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode(body: bytes) -> list[dict]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({"name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex() or None, "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano, "attributes": _attrs(s.attributes), "resource": resource})
    return out


class OtlpSink:
    def __init__(self, keep: bool = True):
        self.spans: list[dict] = []
        self.requests = 0
        self.keep = keep  # False: count only (a benchmark's load)
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                spans = decode(body) if self.path == "/v1/traces" else []
                with sink.lock:
                    sink.requests += 1
                    if sink.keep:
                        sink.spans.extend(spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpSink:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
