"""attrx.client against real servers: the answers the server gives to a hand-written call, batches
split to the server's own limit and put back in input order, 429s retried after Retry-After, the
API key, and the asyncio client."""

from __future__ import annotations

import asyncio
import io
import json
import time

import httpx
import pytest
from PIL import Image

from attrx.client import AsyncClient, AttrxError, Client, Product, Retry


def _values(predictions) -> dict:
    return {a: (p.value, round(p.confidence, 5), p.accepted) for a, p in predictions.items()}


def test_extract_answers_as_the_server_does_for_a_path_bytes_and_a_pil_image(server, demo_catalog, tmp_path):
    image = sorted((demo_catalog.parent / "images").iterdir())[0]
    raw = httpx.post(server.url + "/v1/extract", data={"title": "red cotton shirt"},
                     files={"image": ("x.jpg", image.read_bytes(), "image/jpeg")}, timeout=30).json()
    with Client(server.url) as c:
        by_path = c.extract(title="red cotton shirt", image=image)
        by_bytes = c.extract(title="red cotton shirt", image=image.read_bytes())
        title_only = c.extract(title="red cotton shirt", top_k=3)
        assert c.model().limits["max_request_items"] == 32
    want = {a: (p["value"], round(p["confidence"], 5), p["accepted"]) for a, p in raw["predictions"].items()}
    assert _values(by_path.predictions) == _values(by_bytes.predictions) == want
    assert all(len(p.top_k) == 3 and p.situation.endswith("no_image") for p in title_only.predictions.values())
    with Image.open(image) as im, Client(server.url) as c:  # a PIL image travels as PNG: decoded pixels the same
        pil = c.extract(title="red cotton shirt", image=im.convert("RGB"))
    assert set(pil.predictions) == set(want)


def test_extract_many_splits_to_the_servers_limit_and_keeps_input_order(server, product_images):
    products = [Product(title=f"product {i} blue", image=product_images[i % len(product_images)], id=f"p{i}")
                for i in range(70)]
    products[41] = Product(title="broken", image=b"not an image", id="p41")
    seen = []

    def record(response: httpx.Response) -> None:  # answered calls (a 429 is retried: the same call again)
        if response.request.url.path == "/v1/extract/batch" and response.status_code == 200:
            seen.append(len(json.loads(response.request.content)))

    with Client(server.url, concurrency=3) as c:
        c._http.event_hooks["response"] = [record]
        answers = c.extract_many(products)
        singles = [c.extract(title=p.title, image=p.image) for p in products[:5]]
    assert sorted(seen) == [6, 32, 32]  # at most the server's 32 a call
    assert [a.index for a in answers] == list(range(70)) and [a.id for a in answers] == [p.id for p in products]
    assert answers[41].error is not None and answers[41].predictions is None
    assert all(a.predictions is not None for i, a in enumerate(answers) if i != 41)
    for a, s in zip(answers[:5], singles, strict=True):
        assert _values(a.predictions) == _values(s.predictions)


def test_429s_are_retried_after_retry_after_and_raised_once_retries_run_out(start_server, product_images):
    # 4 products in flight at most, batches slowed down: 6 concurrent calls of 4 products overflow it
    s = start_server(max_request_items=4, max_in_flight=4, env={"ATTRX_INJECT_FAULTS": "slow=40"})
    products = [{"id": str(i), "title": f"shirt {i}", "image": product_images[i % len(product_images)]}
                for i in range(24)]
    tries: list[tuple[float, int]] = []

    def record(response: httpx.Response) -> None:
        tries.append((time.monotonic(), response.status_code))

    with Client(s.url, concurrency=6, retry=Retry(retries=30, backoff_s=0.05, max_backoff_s=2.0)) as c:
        c._http.event_hooks["response"] = [record]
        answers = c.extract_many(products)
    assert [a.id for a in answers] == [p["id"] for p in products] and all(a.predictions for a in answers)
    codes = [code for _, code in tries]
    assert 429 in codes, codes
    with Client(s.url, concurrency=6, retry=Retry(retries=0)) as c:
        with pytest.raises(AttrxError) as e:
            c.extract_many(products)
    assert e.value.status == 429 and e.value.reason == "overloaded" and e.value.request_id


def test_retry_waits_at_least_what_retry_after_says(start_server, product_images):
    s = start_server(max_request_items=4, max_in_flight=4, env={"ATTRX_INJECT_FAULTS": "slow=40"})
    gaps: list[float] = []
    last: dict = {}

    def record(response: httpx.Response) -> None:
        key = response.request.headers["x-request-id"]
        now = time.monotonic()
        if last.get(key, (0, 200))[1] == 429:
            gaps.append(now - last[key][0])
        last[key] = (now, response.status_code)

    products = [{"title": f"shirt {i}", "image": product_images[0]} for i in range(24)]
    with Client(s.url, concurrency=6, retry=Retry(retries=30, backoff_s=0.01, max_backoff_s=5.0)) as c:
        c._http.event_hooks["response"] = [record]
        c.extract_many(products)
    assert gaps and min(gaps) >= 1.0, gaps  # the server says Retry-After: 1; the backoff alone is 0.01 s


def test_the_api_key_is_sent_and_a_wrong_one_is_a_clear_error(start_server):
    s = start_server(env={"ATTRX_API_KEY": "k" * 32})
    with Client(s.url, api_key="k" * 32) as c:
        assert c.extract(title="blue denim jeans").predictions
    with Client(s.url, api_key="w" * 32) as c, pytest.raises(AttrxError) as e:
        c.extract(title="blue denim jeans")
    assert e.value.status == 401


def test_the_async_client_answers_as_the_sync_one(server, product_images):
    products = [{"id": f"a{i}", "title": f"green dress {i}", "image": product_images[i]} for i in range(40)]

    async def run():
        async with AsyncClient(server.url, concurrency=2) as c:
            one = await c.extract(title="green dress", image=product_images[0])
            return one, await c.extract_many(products)

    one, many = asyncio.run(run())
    with Client(server.url) as c:
        ref = c.extract_many(products)
        ref_one = c.extract(title="green dress", image=product_images[0])
    assert _values(one.predictions) == _values(ref_one.predictions)
    assert [_values(a.predictions) for a in many] == [_values(a.predictions) for a in ref]


def test_bad_products_are_refused_before_any_call():
    with Client("http://127.0.0.1:9") as c:
        with pytest.raises(ValueError, match="not \\['colour'\\]"):
            c.extract_many([{"title": "x", "colour": "red"}])
        with pytest.raises(TypeError, match="a path, bytes or a PIL image"):
            c.extract(title="x", image=io.StringIO("no"))
