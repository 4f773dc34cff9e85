"""The synchronous client (`attrx.client.Client`)."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from attrx.client.parts import (
    Retry,
    answer_of,
    as_product,
    auth_headers,
    batch_item,
    in_input_order,
    limits_of,
    next_wait,
    one_product,
    split,
)
from attrx.service.http.schemas import BatchItemResult, BatchResponse, ExtractResponse, ModelInfo


class Client:
    """A synchronous client; thread-safe, one connection pool. Use it as a context manager or close()."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float | httpx.Timeout = 30.0, retry: Retry = Retry(), concurrency: int = 4,
                 transport: httpx.BaseTransport | None = None):
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=auth_headers(api_key), transport=transport)
        self.retry, self.concurrency = retry, concurrency
        self._info: ModelInfo | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        headers = {"X-Request-ID": kw.pop("request_id", None) or uuid.uuid4().hex}
        attempt = 0
        while True:
            try:
                r = self._http.request(method, path, headers=headers, **kw)
            except httpx.TransportError:
                if (wait := next_wait(self.retry, attempt, None)) is None:
                    raise
            else:
                if (wait := next_wait(self.retry, attempt, r)) is None:
                    return answer_of(r)
            time.sleep(wait)
            attempt += 1

    def model(self) -> ModelInfo:
        """GET /v1/model: the served bundle (attributes, classes, thresholds, limits)."""
        with self._lock:
            if self._info is None:
                self._info = ModelInfo.model_validate(self._call("GET", "/v1/model").json())
            return self._info

    def extract(self, title: str | None = None, image=None, *, min_precision: float | None = None,
                top_k: int = 1, request_id: str | None = None) -> ExtractResponse:
        """POST /v1/extract: one product's attributes (multipart with an image, JSON without)."""
        kw = one_product(title, image, min_precision, top_k)
        return ExtractResponse.model_validate(self._call("POST", "/v1/extract", request_id=request_id, **kw).json())

    def extract_many(self, products, *, min_precision: float | None = None, top_k: int = 1
                     ) -> list[BatchItemResult]:
        """Every product's answer, in input order (see the module docstring)."""
        items = [batch_item(as_product(p), min_precision, top_k) for p in products]
        calls = split(items, *limits_of(self.model()))

        def one(idx: list[int]) -> BatchResponse:
            r = self._call("POST", "/v1/extract/batch", json=[items[i] for i in idx])
            return BatchResponse.model_validate(r.json())

        with ThreadPoolExecutor(max(1, self.concurrency)) as pool:
            answers = list(pool.map(one, calls))
        return in_input_order(calls, answers, len(items))
