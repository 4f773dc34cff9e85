"""attrx serve --tracing against an OTLP/HTTP endpoint on 127.0.0.1 (benchmarks/otlp_sink.py: the
exporter's real wire protocol, received and decoded): one trace per request, through both processes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="tracing is the optional extra attrx[tracing]")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from otlp_sink import OtlpSink  # noqa: E402


def _wait(sink: OtlpSink, want: int, rid: str, timeout: float = 20.0) -> list[dict]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with sink.lock:
            got = [s for s in sink.spans if s["attributes"].get("attrx.request_id") == rid]
            trace = {s["trace_id"] for s in got}
            spans = [s for s in sink.spans if s["trace_id"] in trace]
        if len(spans) >= want:
            return spans
        time.sleep(0.1)
    return spans


def test_a_request_is_one_trace_through_the_front_end_and_the_engine(start_server, product_images):
    with OtlpSink() as sink:
        s = start_server(tracing=True, tracing_sample_ratio=1.0,
                         env={"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_BSP_SCHEDULE_DELAY": "100"})
        r = httpx.post(s.url + "/v1/extract", data={"title": "Blue Denim Jacket"},
                       files={"image": ("a.jpg", product_images[0], "image/jpeg")},
                       headers={"X-Request-ID": "traced-1"}, timeout=20)
        assert r.status_code == 200
        spans = _wait(sink, 5, "traced-1")
    by_name = {sp["name"]: sp for sp in spans}
    assert set(by_name) == {"POST /v1/extract", "attrx.decode", "attrx.queue", "attrx.batch", "attrx.inference"}, \
        [sp["name"] for sp in spans]
    root, batch = by_name["POST /v1/extract"], by_name["attrx.batch"]
    assert root["parent"] is None and root["attributes"]["http.response.status_code"] == 200
    assert len({sp["trace_id"] for sp in spans}) == 1  # one trace
    # the engine's spans are children of the front-end's request span: linked across the process boundary
    for name in ("attrx.decode", "attrx.queue", "attrx.batch"):
        assert by_name[name]["parent"] == root["span_id"], name
    assert by_name["attrx.inference"]["parent"] == batch["span_id"]
    assert batch["attributes"]["attrx.batch_size"] >= 1
    assert batch["resource"]["attrx.process"] == "engine" and root["resource"]["attrx.process"].startswith("front-end")
    # times are one clock: the queue ends where the batch starts, the run lies inside the batch, all inside the request
    assert by_name["attrx.queue"]["end"] == batch["start"]
    assert batch["start"] <= by_name["attrx.inference"]["start"] <= by_name["attrx.inference"]["end"] <= batch["end"]
    assert root["start"] <= by_name["attrx.decode"]["start"] and batch["end"] <= root["end"]


def test_a_callers_sampled_trace_is_continued_and_other_requests_are_sampled(start_server):
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with OtlpSink() as sink:
        s = start_server(tracing=True, tracing_sample_ratio=0.01,
                         env={"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_BSP_SCHEDULE_DELAY": "100"})
        r = httpx.post(s.url + "/v1/extract", json={"title": "Red Cap"}, timeout=20,
                       headers={"X-Request-ID": "from-caller", "traceparent": f"00-{caller_trace}-{caller_span}-01"})
        assert r.status_code == 200
        spans = _wait(sink, 4, "from-caller")
        for i in range(20):  # at 1%, these are (almost all) not traced
            httpx.post(s.url + "/v1/extract", json={"title": f"Cap {i}"}, headers={"X-Request-ID": f"plain-{i}"},
                       timeout=20)
        time.sleep(1.0)
        with sink.lock:
            plain = {sp["attributes"].get("attrx.request_id") for sp in sink.spans} - {"from-caller", None}
    root = next(sp for sp in spans if sp["name"] == "POST /v1/extract")
    assert root["trace_id"] == caller_trace and root["parent"] == caller_span  # the caller's trace, continued
    assert {sp["name"] for sp in spans} >= {"attrx.queue", "attrx.batch", "attrx.inference"}
    assert len(plain) <= 3, plain  # 1% sampled: 20 requests leave (almost) nothing
