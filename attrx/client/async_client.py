"""The asyncio client (`attrx.client.AsyncClient`)."""

from __future__ import annotations

import asyncio
import uuid

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


class AsyncClient:
    """The same calls for asyncio: `await c.extract(...)`, `await c.extract_many(...)`."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float | httpx.Timeout = 30.0, retry: Retry = Retry(), concurrency: int = 4,
                 transport: httpx.AsyncBaseTransport | None = None):
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=auth_headers(api_key),
                                       transport=transport)
        self.retry, self.concurrency = retry, concurrency
        self._info: ModelInfo | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kw) -> httpx.Response:
        headers = {"X-Request-ID": kw.pop("request_id", None) or uuid.uuid4().hex}
        attempt = 0
        while True:
            try:
                r = await self._http.request(method, path, headers=headers, **kw)
            except httpx.TransportError:
                if (wait := next_wait(self.retry, attempt, None)) is None:
                    raise
            else:
                if (wait := next_wait(self.retry, attempt, r)) is None:
                    return answer_of(r)
            await asyncio.sleep(wait)
            attempt += 1

    async def model(self) -> ModelInfo:
        if self._info is None:
            self._info = ModelInfo.model_validate((await self._call("GET", "/v1/model")).json())
        return self._info

    async def extract(self, title: str | None = None, image=None, *, min_precision: float | None = None,
                      top_k: int = 1, request_id: str | None = None) -> ExtractResponse:
        kw = one_product(title, image, min_precision, top_k)
        return ExtractResponse.model_validate((await self._call("POST", "/v1/extract", request_id=request_id,
                                                                 **kw)).json())

    async def extract_many(self, products, *, min_precision: float | None = None, top_k: int = 1
                           ) -> list[BatchItemResult]:
        items = [batch_item(as_product(p), min_precision, top_k) for p in products]
        calls = split(items, *limits_of(await self.model()))
        gate = asyncio.Semaphore(max(1, self.concurrency))

        async def one(idx: list[int]) -> BatchResponse:
            async with gate:
                r = await self._call("POST", "/v1/extract/batch", json=[items[i] for i in idx])
            return BatchResponse.model_validate(r.json())

        answers = await asyncio.gather(*(one(idx) for idx in calls))
        return in_input_order(calls, list(answers), len(items))
