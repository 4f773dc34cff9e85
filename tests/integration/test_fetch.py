"""The image fetcher against a real HTTP server on 127.0.0.1 that misbehaves on request
(benchmarks/image_server.py): limits, redirects, retries, Retry-After, stalls, and the cache."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from helpers import ImageHost, png

from attrx.service.catalog.fetch import Fetcher, FetchError, FetchPolicy, backoff, retry_after
from attrx.service.catalog.http_cache import DiskCache
from attrx.service.catalog.sources import ImageReader, resolve


@pytest.fixture()
def host(tmp_path):
    (tmp_path / "a.png").write_bytes(png(8, 8))
    h = ImageHost(tmp_path)
    yield h
    h.stop()


def _fetcher(**kw) -> tuple[Fetcher, list[float]]:
    waits: list[float] = []
    policy = FetchPolicy(**{"backoff_s": 0.01, "retries": 2, **kw})
    return Fetcher(policy, sleep=waits.append), waits


@pytest.mark.parametrize("path, reason, tries, message", [
    ("_html/a.png", "bad_image", 1, "served as text/html, not an image"),
    ("_huge/a.png", "too_large", 1, "1,073,741,824 bytes, over the limit"),
    ("_redirect/9/a.png", "bad_image", 1, "more than 5 redirects"),
    ("_status/403/a.png", "bad_image", 1, "HTTP 403"),
    ("_status/404/a.png", "bad_image", 1, "HTTP 404"),
    ("_status/500/a.png", "bad_image", 3, "HTTP 500 (gave up after 3 tries)"),
    ("_status/429/a.png", "bad_image", 3, "HTTP 429"),
])
def test_each_refusal_names_its_reason_and_only_transient_ones_are_retried(host, path, reason, tries, message):
    f, _ = _fetcher()
    with pytest.raises(FetchError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        f.get(f"{host.url}/{path}")
    assert (e.value.reason, e.value.tries, e.value.url) == (reason, tries, f"{host.url}/{path}")


def test_redirects_are_followed_up_to_the_limit(host):
    f, _ = _fetcher()
    assert f.get(f"{host.url}/_redirect/5/a.png").data == png(8, 8)
    f, _ = _fetcher(max_redirects=2)
    with pytest.raises(FetchError, match="more than 2 redirects"):
        f.get(f"{host.url}/_redirect/3/a.png")


def test_a_stalled_or_dripping_body_ends_at_its_timeout(host):
    for path, why, read, deadline in (("_stall/a.png", "ReadTimeoutError", 0.5, 5.0),
                                      ("_drip/a.png", "not complete in 1 s", 2.0, 1.0)):
        f, _ = _fetcher(read_timeout_s=read, deadline_s=deadline, retries=1)
        t0 = time.monotonic()
        with pytest.raises(FetchError, match=why) as e:
            f.get(f"{host.url}/{path}")
        assert e.value.tries == 2 and e.value.transient and time.monotonic() - t0 < 10


def test_retry_after_is_honoured_and_resets_are_retried(tmp_path):
    (tmp_path / "a.png").write_bytes(png(8, 8))
    h = ImageHost(tmp_path, transient_rate=1.0, transient_failures=2)  # 503 Retry-After: 1, then a reset
    try:
        f, waits = _fetcher()
        got = f.get(f"{h.url}/a.png")
    finally:
        h.stop()
    assert got.tries == 3 and got.data == png(8, 8)
    assert waits[0] >= 1.0 and waits[1] < 1.0  # the server's 1 s, then plain backoff


def test_retry_after_and_backoff_arithmetic():
    assert retry_after("7") == 7.0 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    p = FetchPolicy(backoff_s=1.0, max_backoff_s=4.0, max_retry_after_s=30.0)
    assert all(0 <= backoff(p, k) <= min(4.0, 2**k) for k in range(8) for _ in range(20))
    assert backoff(p, 0, hint=100.0) == 30.0  # a server's Retry-After: a floor, capped


def test_the_cache_revalidates_with_the_etag_and_stays_within_its_bound(host, tmp_path):
    cache = DiskCache(tmp_path / "c", max_bytes=10 * len(png(8, 8)) * 12)
    f = Fetcher(FetchPolicy(), cache)
    assert f.get(f"{host.url}/a.png").source == "network"
    again = Fetcher(FetchPolicy(), cache)  # a new run: asks once, with If-None-Match
    assert again.get(f"{host.url}/a.png").source == "revalidated"
    assert again.get(f"{host.url}/a.png").source == "cache"  # validated in this run: not asked again
    assert host.stats()["not_modified"] == 1
    for i in range(200):
        cache.put(f"http://x/{i}", b"x" * 100, '"e"', None, None)
    total = sum(p.stat().st_size for p in (tmp_path / "c").glob("??/*"))
    assert total <= cache.max_bytes and cache.get("http://x/199") is not None and cache.get("http://x/0") is None


def test_a_changed_image_is_fetched_again(host, tmp_path):
    cache = DiskCache(tmp_path / "c")
    url = f"{host.url}/a.png"
    Fetcher(FetchPolicy(), cache).get(url)
    (tmp_path / "a.png").write_bytes(png(9, 9))
    got = Fetcher(FetchPolicy(), cache).get(url)
    assert got.source == "network" and got.data == png(9, 9)


def test_relative_images_resolve_against_a_remote_catalog():
    assert resolve("img/a.png", "https://cdn.example/feeds/") == "https://cdn.example/feeds/img/a.png"
    assert resolve("s3://b/k.png", "/data") == "s3://b/k.png"
    assert str(resolve("file:///data/a.png", "/x")) == "/data/a.png"
    assert str(resolve("a.png", __import__("pathlib").Path("/data"))) == "/data/a.png"


def test_without_the_remote_extra_a_url_names_the_extra_to_install():
    code = ("import sys; sys.modules['urllib3'] = None\n"
            "from attrx.service.catalog.sources import ImageReader\n"
            "from attrx.service.catalog.fetch import FetchError\n"
            "try:\n    ImageReader(cache_dir=None).read('https://cdn.example/a.jpg')\n"
            "except FetchError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "pip install 'attrx[remote]'" in out


def test_a_reader_refuses_inline_bytes_over_its_limit():
    from attrx.service.catalog.images import ImageLimits

    with pytest.raises(FetchError, match="over the limit"):
        ImageReader(ImageLimits(max_bytes=10), cache_dir=None).read(b"x" * 11)
