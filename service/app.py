"""The FastAPI service: POST a title and/or an image, get attributes back.

Requests are preprocessed in a thread pool, queued into the dynamic batcher and run by its
inference threads; the event loop only parses, waits and answers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from service.batcher import Batcher, BatchResult, DeadlineExceeded, Draining, QueueFull
from service.bundle import Bundle, load_bundle
from service.metrics import Metrics
from service.predict import InputError, Predictor
from service.preprocess import ImageError
from service.runtime import Backend, load_backend
from service.schemas import BatchResponse, ErrorResponse, ExtractRequest, ExtractResponse, ModelInfo
from service.settings import ServeSettings

log = logging.getLogger("uvicorn.error")

ENDPOINTS = {"/v1/extract", "/v1/extract/batch", "/v1/model", "/healthz", "/readyz", "/metrics", "/docs",
             "/openapi.json"}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers


class ClientGone(Exception):
    pass


@dataclass
class State:
    settings: ServeSettings
    bundle: Bundle
    predictor: Predictor
    backend: Backend
    metrics: Metrics
    batcher: Batcher
    pool: ThreadPoolExecutor
    ready: bool = False
    model_ref: dict = field(default_factory=dict)


def _error_body(reason: str, message: str) -> dict:
    return {"error": {"reason": reason, "message": message}}


def _input_error(e: Exception) -> ApiError:
    if isinstance(e, ImageError):
        return ApiError(413 if e.reason == "too_large" else 422, e.reason, str(e))
    if isinstance(e, InputError):
        return ApiError(422, e.reason, str(e))
    raise e


def _warmup_image() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


class _BodyLimit:
    """Refuse bodies over the limit (413), by Content-Length or by counting a streamed body."""

    def __init__(self, app, limit: int, on_reject):
        self.app, self.limit, self.on_reject = app, limit, on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return msg

        async def tracked_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send):
        self.on_reject()
        resp = JSONResponse(_error_body("too_large", f"request body is over the limit of {self.limit:,} bytes"),
                            status_code=413)
        await resp({"type": "http"}, None, send)


class _TooLarge(Exception):
    pass


class _RequestMetrics:
    """Requests by endpoint and status code, and their duration (pure ASGI: cheap)."""

    def __init__(self, app, get_metrics):
        self.app, self.get_metrics = app, get_metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status = {"code": 500}
        t0 = time.perf_counter()

        async def tracked_send(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, tracked_send)
        finally:
            m = self.get_metrics()
            if m is not None:
                m.requests.labels(endpoint, str(status["code"])).inc()
                m.request_seconds.labels(endpoint).observe(time.perf_counter() - t0)


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    holder: dict[str, State] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        bundle = load_bundle(settings.bundle)
        m = bundle.manifest
        metrics = Metrics([a.name for a in m.attributes])
        metrics.model_info.info({"name": m.name, "version": m.version, "family": m.model.family,
                                 "sha256": m.files["model.onnx"].sha256})
        backend = load_backend(bundle, providers=settings.providers, threads=settings.intra_op_threads)
        predictor = Predictor(bundle, max_title_chars=settings.max_title_chars,
                              max_image_pixels=settings.max_image_pixels)
        batcher = Batcher(
            backend.run, max_batch_size=settings.max_batch_size, max_queue_delay_ms=settings.max_queue_delay_ms,
            max_queue_size=settings.max_queue_size, workers=settings.inference_workers,
            on_batch=lambda n, dt: (metrics.batch_size.observe(n), metrics.inference_seconds.observe(dt)),
            on_dequeue=metrics.queue_seconds.observe,
            on_expired=lambda: metrics.rejections.labels("timeout").inc(),
            on_depth=metrics.queue_depth.set,
        )
        st = State(settings, bundle, predictor, backend, metrics, batcher,
                   ThreadPoolExecutor(settings.preprocess_workers, thread_name_prefix="attrx-pre"),
                   model_ref={"name": m.name, "version": m.version})
        holder["state"] = st
        app.state.attrx = st
        batcher.start()

        async def warm_up() -> None:
            # full batches through the real preprocessing and the real model; ready afterwards
            item = predictor.prepare("warm-up product", _warmup_image())
            n = min(settings.max_batch_size, settings.max_queue_size)
            try:
                for _ in range(settings.warmup_batches):
                    await asyncio.gather(*(asyncio.wrap_future(batcher.submit(item, 60.0)) for _ in range(n)))
            except Exception:
                log.exception("attrx: warm-up failed; the server stays not ready")
                return
            st.ready = True
            metrics.ready.set(1)
            log.info("attrx: %s %s ready (%s, batch <= %d, delay %.1f ms)", m.name, m.version,
                     backend.providers[0], settings.max_batch_size, settings.max_queue_delay_ms)

        warm = asyncio.create_task(warm_up())
        try:
            yield
        finally:
            warm.cancel()
            st.ready = False
            metrics.ready.set(0)
            drained = await asyncio.get_running_loop().run_in_executor(None, batcher.stop, settings.drain_timeout_s)
            st.pool.shutdown(wait=False, cancel_futures=True)
            log.info("attrx: stopped (%s)", "drained" if drained else "drain timed out")

    app = FastAPI(
        title="attrx",
        description="Product attribute extraction from a title and an image (CMA-CLIP multi-task model).",
        version="0.1.0",
        lifespan=lifespan,
        responses={401: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 415: {"model": ErrorResponse},
                   422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}, 503: {"model": ErrorResponse},
                   504: {"model": ErrorResponse}},
    )

    def state() -> State:
        st = holder.get("state")
        if st is None or not st.ready:
            raise ApiError(503, "draining" if st is not None else "not_ready", "the model is not ready yet",
                           {"Retry-After": "1"})
        return st

    def reject(reason: str) -> None:
        st = holder.get("state")
        if st is not None:
            st.metrics.rejections.labels(reason).inc()

    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes, on_reject=lambda: reject("too_large"))
    app.add_middleware(_RequestMetrics, get_metrics=lambda: holder["state"].metrics if "state" in holder else None)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        if not getattr(e, "counted", False):
            reject(e.reason)
        return JSONResponse(_error_body(e.reason, e.message), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        reject("bad_request")
        msg = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        return JSONResponse(_error_body("bad_request", msg), status_code=422)

    async def require_key(request: Request) -> None:
        key = settings.api_key
        if not key:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API key (send 'Authorization: Bearer <key>')",
                           {"WWW-Authenticate": "Bearer"})

    async def prepare(st: State, title, image):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(st.pool, st.predictor.prepare, title, image)
        except (ImageError, InputError) as e:
            raise _input_error(e) from None

    async def infer(st: State, inputs, request: Request, deadline: float) -> BatchResult:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ApiError(504, "timeout", "the request's deadline passed before it was queued")
        try:
            fut = st.batcher.submit(inputs, remaining)
        except QueueFull as e:
            raise ApiError(429, "queue_full", f"{e}; retry shortly", {"Retry-After": "1"}) from None
        except Draining as e:
            raise ApiError(503, "draining", str(e), {"Retry-After": "1"}) from None
        afut = asyncio.wrap_future(fut)
        while True:
            left = deadline - time.monotonic()
            done, _ = await asyncio.wait({afut}, timeout=max(0.0, min(0.25, left)))
            if done:
                break
            if time.monotonic() >= deadline and fut.cancel():
                raise ApiError(504, "timeout", f"not run within {st.settings.request_timeout_ms:.0f} ms")
            if await request.is_disconnected() and fut.cancel():
                reject("client_gone")
                raise ClientGone
        try:
            return afut.result()
        except DeadlineExceeded:
            # counted as a timeout rejection by the batcher; answered here without another count
            return _raise_quiet(504, "timeout", f"not run within {st.settings.request_timeout_ms:.0f} ms")
        except Draining as e:
            raise ApiError(503, "draining", str(e), {"Retry-After": "1"}) from None

    def _raise_quiet(status, reason, message):
        e = ApiError(status, reason, message)
        e.counted = True
        raise e

    @app.exception_handler(ClientGone)
    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, e: Exception):
        # the client hung up (while sending its body, or while its request was queued): nobody to answer
        if isinstance(e, ClientDisconnect):
            reject("client_gone")
        return Response(status_code=499)

    def parse_image_b64(data: str | None) -> bytes | None:
        if data is None or data == "":
            return None
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "bad_image", "image_base64 is not valid base64") from None

    @app.post("/v1/extract", response_model=ExtractResponse, dependencies=[Depends(require_key)],
              summary="Attributes of one product",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": ExtractRequest.model_json_schema()},
                  "multipart/form-data": {"schema": {"type": "object", "properties": {
                      "title": {"type": "string"}, "image": {"type": "string", "format": "binary"},
                      "min_precision": {"type": "number"}, "top_k": {"type": "integer"}}}}}}})
    async def extract(request: Request):
        """One product as multipart (`title` field, `image` file) or JSON (`title`, `image_base64`).
        Either may be absent, not both."""
        t0 = time.monotonic()
        st = state()
        deadline = t0 + st.settings.request_timeout_ms / 1000.0
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=8)
            except Exception as e:  # malformed multipart
                raise ApiError(422, "bad_request", f"malformed multipart body ({e})") from None
            title = form.get("title")
            upload = form.get("image")
            image = await upload.read() if hasattr(upload, "read") else None
            try:
                mp = form.get("min_precision")
                min_precision = float(mp) if mp not in (None, "") else None
                top_k = int(form.get("top_k") or 1)
            except ValueError:
                raise ApiError(422, "bad_option", "min_precision must be a number and top_k an integer") from None
            if isinstance(title, str) is False and title is not None:
                raise ApiError(422, "bad_request", "title must be a text field")
        elif ctype == "application/json":
            try:
                req = ExtractRequest.model_validate_json(await request.body())
            except ValidationError as e:
                raise ApiError(422, "bad_request", _explain(e)) from None
            title, image = req.title, parse_image_b64(req.image_base64)
            min_precision, top_k = req.min_precision, req.top_k
        else:
            raise ApiError(415, "unsupported_media_type",
                           f"content type {ctype or '(none)'!r} is not accepted; send multipart/form-data or application/json")
        if not 1 <= top_k <= 50:
            raise ApiError(422, "bad_option", "top_k must be between 1 and 50")
        try:
            key = st.predictor.precision_key(min_precision)
        except InputError as e:
            raise _input_error(e) from None
        inputs = await prepare(st, title, image)
        res = await infer(st, inputs, request, deadline)
        preds = st.predictor.decode(res.outputs, res.row, key=key, top_k=top_k)
        st.metrics.observe_predictions(preds)
        return JSONResponse({"model": st.model_ref, "min_precision": key, "predictions": preds,
                             "latency_ms": round((time.monotonic() - t0) * 1000, 3)})

    @app.post("/v1/extract/batch", response_model=BatchResponse, dependencies=[Depends(require_key)],
              summary="Attributes of several products",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "array", "items": ExtractRequest.model_json_schema()}}}}})
    async def extract_batch(request: Request):
        """A JSON list of products (each as in /v1/extract's JSON form). One failed item gets its own
        error entry and does not fail the others."""
        t0 = time.monotonic()
        st = state()
        deadline = t0 + st.settings.request_timeout_ms / 1000.0
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "unsupported_media_type", f"content type {ctype or '(none)'!r}: send application/json")
        try:
            import json

            body = json.loads(await request.body())
        except ValueError:
            raise ApiError(422, "bad_request", "body is not valid JSON") from None
        if not isinstance(body, list):
            raise ApiError(422, "bad_request", "body must be a JSON list of products")
        if len(body) > st.settings.max_batch_items:
            raise ApiError(413, "too_large", f"{len(body)} products; the limit is {st.settings.max_batch_items}")

        async def one(i: int, raw) -> dict:
            pid = raw.get("id") if isinstance(raw, dict) else None
            try:
                req = ExtractRequest.model_validate(raw)
                key = st.predictor.precision_key(req.min_precision)
                inputs = await prepare(st, req.title, parse_image_b64(req.image_base64))
                res = await infer(st, inputs, request, deadline)
            except ApiError as e:
                if not getattr(e, "counted", False):
                    reject(e.reason)
                return {"index": i, "id": pid, "error": {"reason": e.reason, "message": e.message}}
            except ValidationError as e:
                reject("bad_request")
                return {"index": i, "id": pid, "error": {"reason": "bad_request", "message": _explain(e)}}
            except InputError as e:
                reject(e.reason)
                return {"index": i, "id": pid, "error": {"reason": e.reason, "message": str(e)}}
            preds = st.predictor.decode(res.outputs, res.row, key=key, top_k=req.top_k)
            st.metrics.observe_predictions(preds)
            return {"index": i, "id": req.id, "min_precision": key, "predictions": preds}

        results = await asyncio.gather(*(one(i, raw) for i, raw in enumerate(body)))
        return JSONResponse({"model": st.model_ref, "results": results,
                             "latency_ms": round((time.monotonic() - t0) * 1000, 3)})

    @app.get("/v1/model", response_model=ModelInfo, dependencies=[Depends(require_key)],
             summary="The served bundle: attributes, classes, thresholds, training metrics")
    async def model_info():
        st = state()
        m = st.bundle.manifest
        return ModelInfo(
            name=m.name, version=m.version, family=m.model.family, created=m.created,
            precision_targets=m.precision_targets,
            attributes=[{"name": a.name, "classes": a.classes, "thresholds": a.thresholds, "support": a.support}
                        for a in m.attributes],
            metrics=m.metrics, backend=st.backend.name, providers=st.backend.providers,
            batching={"max_batch_size": st.settings.max_batch_size,
                      "max_queue_delay_ms": st.settings.max_queue_delay_ms,
                      "max_queue_size": st.settings.max_queue_size,
                      "request_timeout_ms": st.settings.request_timeout_ms},
        )

    @app.get("/healthz", summary="The process is alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="503 until the bundle is loaded and a warm-up batch has run")
    async def readyz():
        st = holder.get("state")
        if st is None or not st.ready:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return {"status": "ready", "model": st.model_ref}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        st = holder.get("state")
        if st is None:
            return Response("", media_type=CONTENT_TYPE_LATEST)
        st.metrics.queue_depth.set(st.batcher.depth)
        return Response(generate_latest(st.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _explain(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}" for err in e.errors())
