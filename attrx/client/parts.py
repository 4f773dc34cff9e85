"""What both clients share: products to request bodies, calls split to the server's limits, retry
waits, problem details to errors."""

from __future__ import annotations

import base64
import io
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from attrx.service.http.schemas import BatchItemResult, BatchResponse, ModelInfo

RETRIED = (429, 502, 503, 504)
DEFAULT_ITEMS, DEFAULT_BODY = 32, 10 * 1024 * 1024  # a server too old to list its limits


class AttrxError(Exception):
    """An error answer (after the retries, for the statuses that are retried)."""

    def __init__(self, status: int, reason: str, detail: str, request_id: str | None = None,
                 problem: dict | None = None):
        super().__init__(f"{status} {reason}: {detail}" + (f" (request {request_id})" if request_id else ""))
        self.status, self.reason, self.detail, self.request_id = status, reason, detail, request_id
        self.problem = problem or {}


@dataclass(frozen=True)
class Product:
    title: str | None = None
    image: Any = None  # a path, bytes, a PIL image, or None
    id: str | None = None


@dataclass(frozen=True)
class Retry:
    retries: int = 5  # tries after the first
    backoff_s: float = 0.5  # the first wait; doubled each try, with jitter
    max_backoff_s: float = 30.0

    def wait(self, attempt: int, retry_after: float | None) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)
        return max(base, min(retry_after or 0.0, self.max_backoff_s))


def image_bytes(image) -> bytes | None:
    """A path (str or Path), bytes or a PIL image -> the file's bytes (PIL images as PNG)."""
    if image is None or isinstance(image, bytes):
        return image
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if hasattr(image, "save"):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"image: a path, bytes or a PIL image, not {type(image).__name__}")


def as_product(p) -> Product:
    if isinstance(p, Product):
        return p
    if isinstance(p, dict):
        unknown = set(p) - {"id", "title", "image"}
        if unknown:
            raise ValueError(f"a product has id, title and image; not {sorted(unknown)}")
        return Product(p.get("title"), p.get("image"), p.get("id"))
    raise TypeError(f"a product is a dict or attrx.client.Product, not {type(p).__name__}")


def batch_item(p: Product, min_precision: float | None, top_k: int) -> dict:
    data = image_bytes(p.image)
    item: dict = {"title": p.title, "top_k": top_k}
    if p.id is not None:
        item["id"] = p.id
    if data is not None:
        item["image_base64"] = base64.b64encode(data).decode()
    if min_precision is not None:
        item["min_precision"] = min_precision
    return item


def split(items: list[dict], max_items: int, max_bytes: int) -> list[list[int]]:
    """Indices of items in calls of at most max_items products and about max_bytes of JSON each."""
    calls: list[list[int]] = []
    size = 0
    for i, it in enumerate(items):
        n = len(it.get("image_base64") or "") + len(it.get("title") or "") * 4 + 128
        if not calls or len(calls[-1]) >= max_items or (calls[-1] and size + n > max_bytes * 0.95):
            calls.append([])
            size = 2
        calls[-1].append(i)
        size += n
    return calls


def retry_after(r: httpx.Response) -> float | None:
    v = r.headers.get("retry-after")
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(v).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def error_of(r: httpx.Response) -> AttrxError:
    """The problem details of an error answer (RFC 9457; the shape before it, {"error": {...}}, too)."""
    try:
        body = r.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    old = body.get("error") if isinstance(body.get("error"), dict) else {}
    reason = body.get("reason") or old.get("reason") or f"http_{r.status_code}"
    detail = body.get("detail") or old.get("message") or r.text[:200]
    return AttrxError(r.status_code, reason, detail, r.headers.get("x-request-id"), body)


def one_product(title: str | None, image, min_precision: float | None, top_k: int) -> dict:
    """httpx keyword arguments of a /v1/extract call: multipart with the image file, else JSON."""
    raw = image_bytes(image)
    if raw is None:
        return {"json": {k: v for k, v in (("title", title), ("min_precision", min_precision), ("top_k", top_k))
                         if v is not None}}
    data = {k: str(v) for k, v in (("title", title), ("min_precision", min_precision), ("top_k", top_k))
            if v is not None}
    return {"data": data, "files": {"image": ("image", raw, "application/octet-stream")}}


def next_wait(retry: Retry, attempt: int, r: httpx.Response | None) -> float | None:
    """Seconds to wait before trying again, or None: answer with r (or raise its error). r None: the
    connection failed."""
    if attempt >= retry.retries:
        return None
    if r is None:
        return retry.wait(attempt, None)
    return retry.wait(attempt, retry_after(r)) if r.status_code in RETRIED else None


def answer_of(r: httpx.Response) -> httpx.Response:
    if r.status_code >= 400:
        raise error_of(r)
    return r


def auth_headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def limits_of(info: ModelInfo) -> tuple[int, int]:
    lim = info.limits or {}
    return int(lim.get("max_request_items", DEFAULT_ITEMS)), int(lim.get("max_body_bytes", DEFAULT_BODY))


def in_input_order(calls: list[list[int]], answers: list[BatchResponse], n: int) -> list[BatchItemResult]:
    out: list[BatchItemResult | None] = [None] * n
    for idx, answer in zip(calls, answers, strict=True):
        for r in answer.results:
            out[idx[r.index]] = r.model_copy(update={"index": idx[r.index]})
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:
        raise AttrxError(500, "incomplete_answer", f"the server answered no result for products {missing[:10]}")
    return out  # type: ignore[return-value]


