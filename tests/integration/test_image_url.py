"""`image_url` in POST /v1/extract: off by default, and each refusal of server-side fetching, against
real `attrx serve` processes and a real image server on 127.0.0.1 (benchmarks/image_server.py)."""

from __future__ import annotations

import base64

import httpx
import pytest
from helpers import ImageHost, png


@pytest.fixture()
def host(product_images, tmp_path):
    (tmp_path / "a.jpg").write_bytes(product_images[0])
    (tmp_path / "tiny.png").write_bytes(png(4, 4))
    h = ImageHost(tmp_path)
    yield h
    h.stop()


def _post(server, **body) -> httpx.Response:
    return httpx.post(server.url + "/v1/extract", json=body, timeout=30)


def _reason(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["reason"]


def test_off_by_default(server, host):
    assert _reason(_post(server, title="Red Tee", image_url=f"{host.url}/a.jpg")) == (403, "image_url_off")


def test_an_allowed_url_is_fetched_and_predicted_as_an_upload(start_server, host, product_images):
    s = start_server(image_url_allow="127.0.0.1", image_url_allow_networks="127.0.0.0/8", request_timeout_ms=2000)
    by_url = _post(s, title="Red Tee", image_url=f"{host.url}/a.jpg")
    upload = _post(s, title="Red Tee", image_base64=base64.b64encode(product_images[0]).decode())
    assert by_url.status_code == 200 and by_url.json()["predictions"] == upload.json()["predictions"]
    cases = {
        "_huge/a.jpg": (413, "image_too_large"),
        "_status/404/a.jpg": (422, "image_unavailable"),
        "_html/a.jpg": (422, "image_unavailable"),
        "_status/503/a.jpg": (502, "image_fetch_failed"),
        "_stall/a.jpg": (504, "image_fetch_timeout"),
    }
    for path, want in cases.items():
        assert _reason(_post(s, title="Red Tee", image_url=f"{host.url}/{path}")) == want, path
    assert _reason(_post(s, title="x", image_url="file:///etc/passwd")) == (422, "bad_image_url")
    assert _reason(_post(s, title="x", image_url=f"{host.url}/a.jpg",
                         image_base64=base64.b64encode(b"x").decode())) == (422, "bad_request")
    batch = httpx.post(s.url + "/v1/extract/batch", timeout=30, json=[
        {"title": "Red Tee", "image_url": f"{host.url}/a.jpg"},
        {"title": "Red Tee", "image_url": f"{host.url}/_status/404/a.jpg"}]).json()["results"]
    assert "predictions" in batch[0] and batch[1]["error"]["reason"] == "image_unavailable"
    assert _post(s, title="Red Tee", image_url=f"{host.url}/a.jpg").status_code == 200  # still serving


def test_hosts_and_redirect_targets_off_the_allow_list_are_refused(start_server, host):
    s = start_server(image_url_allow=f"{host.url}/_redirect/,cdn.example", image_url_allow_networks="127.0.0.0/8")
    assert _post(s, title="x", image_url=f"{host.url}/_redirect/2/a.jpg").status_code == 403  # 3rd hop leaves
    assert _reason(_post(s, title="x", image_url=f"{host.url}/_redirect/1/a.jpg")) == (403, "image_url_not_allowed")
    assert _reason(_post(s, title="x", image_url=f"{host.url}/a.jpg")) == (403, "image_url_not_allowed")
    assert host.stats()["requests"] == 3  # the hops on the list (2 + 1); nothing off it was requested


def test_private_loopback_and_metadata_addresses_are_refused_unless_named(start_server, host):
    s = start_server(image_url_allow="127.0.0.1,localhost,169.254.169.254,10.0.0.8")
    for url in (f"{host.url}/a.jpg", host.url.replace("127.0.0.1", "localhost") + "/a.jpg",
                "http://169.254.169.254/latest/meta-data/", "http://10.0.0.8/a.jpg"):
        assert _reason(_post(s, title="x", image_url=url)) == (403, "image_url_private"), url
    assert host.stats().get("requests", 0) == 0
