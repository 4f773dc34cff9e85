"""The HTTP service: real `attrx serve` processes on 127.0.0.1 serving the real tiny bundle."""

import base64
import concurrent.futures as cf
import re
import shutil
import signal
import struct
import subprocess
import time
import zlib

import httpx
import pytest
from helpers import ATTRS, metric, scrape, wait_metric


def _huge_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _check_prediction(body: dict, title: bool, image: bool) -> None:
    assert body["model"]["name"] == "tiny-test" and body["latency_ms"] > 0
    assert set(body["predictions"]) == set(ATTRS)
    for p in body["predictions"].values():
        w = p["modality_weights"]
        assert w["text"] + w["image"] == pytest.approx(1.0, abs=1e-6)
        if not title:
            assert w == {"text": 0.0, "image": 1.0}
        if not image:
            assert w == {"text": 1.0, "image": 0.0}
        assert 0 <= p["confidence"] <= 1 and p["top_k"][0]["value"] == p["value"]
        assert p["accepted"] == (p["threshold"] is not None and p["confidence"] >= p["threshold"])


def test_multipart_and_json_give_the_same_answer(server, product_images):
    img = product_images[0]
    a = httpx.post(server.url + "/v1/extract", data={"title": "Nimbus Men Red Cap", "top_k": "3"},
                   files={"image": ("p.jpg", img, "image/jpeg")}, timeout=10)
    b = httpx.post(server.url + "/v1/extract", timeout=10, json={
        "title": "Nimbus Men Red Cap", "image_base64": base64.b64encode(img).decode(), "top_k": 3})
    assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    _check_prediction(a.json(), True, True)
    assert a.json()["predictions"] == b.json()["predictions"]
    assert len(a.json()["predictions"]["colour"]["top_k"]) == 3


def test_title_only_and_image_only(server, product_images):
    r = httpx.post(server.url + "/v1/extract", json={"title": "Velora Women Pink Dress"}, timeout=10)
    assert r.status_code == 200, r.text
    _check_prediction(r.json(), True, False)
    r = httpx.post(server.url + "/v1/extract", files={"image": ("p.jpg", product_images[1], "image/jpeg")}, timeout=10)
    assert r.status_code == 200, r.text
    _check_prediction(r.json(), False, True)


def test_min_precision_selects_thresholds(server):
    model = httpx.get(server.url + "/v1/model", timeout=10).json()
    assert model["precision_targets"] == [0.9, 0.95] and [a["name"] for a in model["attributes"]] == ATTRS
    r = httpx.post(server.url + "/v1/extract", json={"title": "Unisex Black Cap", "min_precision": 0.95}, timeout=10)
    body = r.json()
    assert body["min_precision"] == "0.95"
    colour = next(a for a in model["attributes"] if a["name"] == "colour")
    assert len(colour["support"]) == len(colour["classes"])  # the validation positives behind each threshold
    p = body["predictions"]["colour"]
    assert p["threshold"] == colour["thresholds"]["0.95"][colour["classes"].index(p["value"])]
    r = httpx.post(server.url + "/v1/extract", json={"title": "Cap", "min_precision": 0.5}, timeout=10)
    assert r.status_code == 422 and r.json()["reason"] == "bad_option"


def test_concurrent_requests_form_batches(start_server, product_images):
    s = start_server(batching="fixed", max_queue_delay_ms=100, max_batch_size=16)
    before = scrape(s)
    with cf.ThreadPoolExecutor(16) as ex:
        rs = list(ex.map(lambda i: httpx.post(s.url + "/v1/extract", timeout=20, data={"title": f"Tee {i}"},
                                              files={"image": ("p.jpg", product_images[i], "image/jpeg")}),
                         range(16)))
    assert all(r.status_code == 200 for r in rs)
    after = scrape(s)
    batches = metric(after, "attrx_batch_size_count") - metric(before, "attrx_batch_size_count")
    items = metric(after, "attrx_batch_size_sum") - metric(before, "attrx_batch_size_sum")
    assert items == 16 and batches < 16, f"{items} items in {batches} batches"
    assert metric(after, "attrx_requests_total", '{code="200",endpoint="/v1/extract"}') >= 16
    assert metric(after, "attrx_prediction_confidence_count", '{attribute="colour"}') >= 16


def test_queue_overflow_is_429_and_expired_deadline_is_504(start_server):
    # a long queue delay keeps items queued: the 5th concurrent request finds the queue full
    s = start_server(batching="fixed", max_queue_delay_ms=1500, max_batch_size=64, max_queue_size=4, request_timeout_ms=10000)
    with cf.ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda i: httpx.post(s.url + "/v1/extract", json={"title": f"Cap {i}"}, timeout=20),
                         range(8)))
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) == 4 and codes.count(429) == 4, codes
    r429 = next(r for r in rs if r.status_code == 429)
    assert r429.headers["retry-after"] == "1" and r429.json()["reason"] == "queue_full"

    t = start_server(batching="fixed", max_queue_delay_ms=1500, max_batch_size=64, request_timeout_ms=200)
    before = scrape(t)
    r = httpx.post(t.url + "/v1/extract", json={"title": "Red Cap"}, timeout=20)
    assert r.status_code == 504 and r.json()["reason"] == "timeout"
    time.sleep(1.6)  # past the batch delay: the expired request must not have been run
    after = scrape(t)
    assert metric(after, "attrx_batch_size_count") == metric(before, "attrx_batch_size_count")
    assert metric(after, "attrx_rejections_total", '{reason="timeout"}') == 1
    assert metric(scrape(s), "attrx_rejections_total", '{reason="queue_full"}') == 4


def test_a_client_that_disconnects_is_dropped_from_the_queue(start_server):
    s = start_server(batching="fixed", max_queue_delay_ms=2000, max_batch_size=64, request_timeout_ms=10000)
    before = scrape(s)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        httpx.post(s.url + "/v1/extract", json={"title": "Red Cap"}, timeout=0.4)
    time.sleep(2.3)  # past the batch delay: the abandoned request must not have been run
    after = scrape(s)
    assert metric(after, "attrx_batch_size_count") == metric(before, "attrx_batch_size_count")
    assert metric(after, "attrx_rejections_total", '{reason="client_gone"}') == 1
    assert httpx.post(s.url + "/v1/extract", json={"title": "Red Cap"}, timeout=10).status_code == 200


def check_problem(r: httpx.Response, server, status: int, reason: str) -> None:
    """An RFC 9457 problem: its media type, members, the request id in the header and the body, the
    old shape kept for one release, and a type the server explains."""
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["reason"] == reason and body["detail"] and body["title"]
    assert body["type"] == f"/problems/{reason}" and body["request_id"] == r.headers["x-request-id"]
    assert body["instance"] == f"urn:attrx:request:{body['request_id']}"
    assert body["error"] == {"reason": reason, "message": body["detail"]}
    about = httpx.get(server.url + body["type"], timeout=10).json()
    assert about["reason"] == reason and status in about["statuses"]


@pytest.mark.parametrize(
    "kind, status, reason",
    [
        ("undecodable", 422, "bad_image"),
        ("truncated_jpeg", 422, "bad_image"),
        ("bad_base64", 422, "bad_image"),
        ("pixel_bomb", 413, "too_large"),
        ("huge_body", 413, "too_large"),
        ("neither", 422, "empty"),
        ("empty_title_no_image", 422, "empty"),
        ("long_title", 422, "title_too_long"),
        ("wrong_content_type", 415, "unsupported_media_type"),
        ("bad_json", 400, "malformed_json"),
    ],
)
def test_bad_input_is_answered_and_the_server_keeps_serving(server, product_images, kind, status, reason):
    url = server.url + "/v1/extract"
    jpeg = product_images[2]
    if kind == "undecodable":
        r = httpx.post(url, files={"image": ("x.jpg", b"this is not an image", "image/jpeg")}, timeout=10)
    elif kind == "truncated_jpeg":
        r = httpx.post(url, files={"image": ("x.jpg", jpeg[: len(jpeg) // 3], "image/jpeg")}, timeout=10)
    elif kind == "bad_base64":
        r = httpx.post(url, json={"title": "Tee", "image_base64": "@@not base64@@"}, timeout=10)
    elif kind == "pixel_bomb":
        r = httpx.post(url, files={"image": ("bomb.png", _huge_png(8_000, 6_000), "image/png")}, timeout=10)
    elif kind == "huge_body":
        r = httpx.post(url, files={"image": ("big.jpg", b"\0" * (3 * 1024 * 1024), "image/jpeg")}, timeout=10)
    elif kind == "neither":
        r = httpx.post(url, json={}, timeout=10)
    elif kind == "empty_title_no_image":
        r = httpx.post(url, data={"title": "   "}, files={"image": ("e.jpg", b"", "image/jpeg")}, timeout=10)
    elif kind == "long_title":
        r = httpx.post(url, json={"title": "x" * 3000}, timeout=10)
    elif kind == "wrong_content_type":
        r = httpx.post(url, content=b"title=Tee", headers={"content-type": "text/plain"}, timeout=10)
    else:
        r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == status, r.text
    check_problem(r, server, status, reason)
    ok = httpx.post(url, json={"title": "Roadster Men Blue Tee"}, timeout=10)
    assert ok.status_code == 200
    assert metric(scrape(server), "attrx_rejections_total", f'{{reason="{reason}"}}') >= 1


def test_batch_endpoint_isolates_failures(server, product_images):
    items = [
        {"id": "a", "title": "Roadster Men Blue Striped Tee"},
        {"id": "b", "image_base64": base64.b64encode(b"garbage").decode()},
        {"id": "c", "image_base64": base64.b64encode(product_images[3]).decode(), "top_k": 2},
        {"id": "d"},
        "not an object",
    ]
    r = httpx.post(server.url + "/v1/extract/batch", json=items, timeout=20)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["index"] for x in res] == [0, 1, 2, 3, 4]
    assert res[0]["predictions"] and res[2]["predictions"] and len(res[2]["predictions"]["colour"]["top_k"]) == 2
    assert res[1]["error"]["reason"] == "bad_image" and res[1]["id"] == "b"
    assert res[3]["error"]["reason"] == "empty" and res[4]["error"]["reason"] == "bad_request"
    too_many = httpx.post(server.url + "/v1/extract/batch", json=[{"title": "x"}] * 65, timeout=20)
    assert too_many.status_code == 413
    assert httpx.post(server.url + "/v1/extract/batch", json={"title": "x"}, timeout=10).status_code == 422


def test_readyz_turns_200_after_warmup(start_server):
    s = start_server(wait_ready=False, warmup_batches=400, max_batch_size=64)
    first = httpx.get(s.url + "/readyz", timeout=5)
    assert first.status_code == 503
    assert httpx.get(s.url + "/healthz", timeout=5).status_code == 200
    r = httpx.post(s.url + "/v1/extract", json={"title": "Tee"}, timeout=5)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["reason"] == "not_ready" and first.json()["reason"] == "not_ready"
    s.wait_ready()
    assert httpx.get(s.url + "/readyz", timeout=5).json()["status"] == "ready"
    assert metric(scrape(s), "attrx_ready") == 1


def test_api_key(start_server):
    s = start_server(env={"ATTRX_API_KEY": "s3cret-inference-key"})
    url = s.url + "/v1/extract"
    assert httpx.post(url, json={"title": "Tee"}, timeout=10).status_code == 401
    bad = httpx.post(url, json={"title": "Tee"}, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert bad.status_code == 401 and bad.json()["reason"] == "unauthorized"
    good = httpx.post(url, json={"title": "Tee"}, headers={"Authorization": "Bearer s3cret-inference-key"}, timeout=10)
    assert good.status_code == 200
    assert httpx.get(s.url + "/v1/model", timeout=10).status_code == 401
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(s.url + open_path, timeout=10).status_code == 200


def test_sigterm_drains_requests_in_flight(start_server):
    # a long batch delay holds all 12 in the queue; SIGTERM is sent once the server has admitted all
    # of them (read from its own gauge, not guessed with a sleep), and closes the batch at once
    s = start_server(batching="fixed", max_queue_delay_ms=4000, max_batch_size=64, drain_timeout_s=10, log_level="info")
    with cf.ThreadPoolExecutor(12) as ex:
        futs = [ex.submit(httpx.post, s.url + "/v1/extract", json={"title": f"Tee {i}"}, timeout=30)
                for i in range(12)]
        wait_metric(s, "attrx_in_flight", 12)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        rs = [f.result() for f in futs]
    assert [r.status_code for r in rs] == [200] * 12
    assert time.monotonic() - t0 < 3.0, "draining should run the queued batch at once, not after its delay"
    assert s.proc.wait(timeout=20) == 0  # drained: a normal exit, not a re-raised SIGTERM
    assert "attrx: stopped (drained)" in s.output()
    with pytest.raises(httpx.TransportError):
        httpx.get(s.url + "/healthz", timeout=2)


def test_metrics_names_and_promtool(server, bundle):
    httpx.post(server.url + "/v1/extract", json={"title": "Nimbus Women Green Dotted Dress"}, timeout=10)
    text = scrape(server)
    for name in ("attrx_requests_total", "attrx_request_duration_seconds_bucket", "attrx_queue_wait_duration_seconds_bucket",
                 "attrx_inference_duration_seconds_bucket", "attrx_batch_size_bucket", "attrx_queue_depth",
                 "attrx_rejections_total", "attrx_model_info", "attrx_prediction_confidence_bucket",
                 "attrx_image_modality_weight_bucket", "attrx_ready"):
        assert re.search(rf"^{name}[{{ ]", text, re.M), name
    from attrx.service.contract.bundle import load_bundle

    sha = load_bundle(bundle).manifest.files["model.onnx"].sha256
    info = [ln for ln in text.splitlines() if ln.startswith("attrx_model_info{")]
    # one series, from the inference process, naming the variant that runs (fp32: the bundle has no other)
    assert info == [f'attrx_model_info{{backend="onnxruntime",family="cma-clip",name="tiny-test",precision="fp32",'
                    f'provider="CPUExecutionProvider",sha256="{sha}",version="0.1.0"}} 1.0'], info
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'); metric names checked above")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_openapi_documents_the_api(server):
    spec = httpx.get(server.url + "/openapi.json", timeout=10).json()
    assert {"/v1/extract", "/v1/extract/batch", "/v1/model", "/healthz", "/readyz"} <= set(spec["paths"])
    content = spec["paths"]["/v1/extract"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert httpx.get(server.url + "/docs", timeout=10).status_code == 200



def test_the_request_id_is_kept_or_made_and_an_unknown_problem_type_is_a_problem(server):
    r = httpx.post(server.url + "/v1/extract", json={"title": "Blue Tee"}, headers={"X-Request-ID": "order-42.a:b"},
                   timeout=10)
    assert r.status_code == 200 and r.headers["x-request-id"] == "order-42.a:b"
    made = httpx.post(server.url + "/v1/extract", json={"title": "Blue Tee"}, timeout=10).headers["x-request-id"]
    forged = httpx.post(server.url + "/v1/extract", json={"title": "Blue Tee"},
                        headers={"X-Request-ID": "x\tINFO: forged log line"}, timeout=10).headers["x-request-id"]
    assert len(made) == 32 and len(forged) == 32 and forged != made  # not a valid id: one of the server's own
    check_problem(httpx.get(server.url + "/problems/no_such_reason", timeout=10), server, 404, "not_found")
    check_problem(httpx.get(server.url + "/no/such/path", timeout=10), server, 404, "not_found")
    check_problem(httpx.get(server.url + "/v1/extract", timeout=10), server, 405, "method_not_allowed")


def test_a_batch_over_the_item_limit_has_its_own_reason(server):
    r = httpx.post(server.url + "/v1/extract/batch", json=[{"title": "Tee"}] * 33, timeout=10)
    assert r.status_code == 413
    check_problem(r, server, 413, "too_many_items")


def test_the_request_id_is_in_the_log_lines_of_both_processes(start_server):
    # half the batches fail: the inference process logs the failure of each product, naming its request
    s = start_server(log_level="info", access_log=True, env={"ATTRX_INJECT_FAULTS": "raise=0.5,seed=3"})
    for i in range(40):
        r = httpx.post(s.url + "/v1/extract", json={"title": "Red Cap"}, headers={"X-Request-ID": f"trace-me-{i}"},
                       timeout=20)
        if r.status_code == 500:
            break
    assert r.status_code == 500 and r.json()["reason"] == "batch_failed"
    rid = r.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(lines := [x for x in s.output().splitlines() if f"[{rid}]" in x]) < 2:
        time.sleep(0.1)
    assert any("attrx engine" in x and "failed" in x for x in lines), lines  # the inference process
    assert any('"POST /v1/extract HTTP/1.1" 500' in x for x in lines), lines  # the front-end's access log
