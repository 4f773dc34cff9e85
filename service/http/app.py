"""The FastAPI front-end: POST a title and/or an image, get attributes back.

`attrx serve` runs several of these processes on one socket, and one inference process
(`attrx.service.serving.supervisor`). A request passes, in order: the admission gate (`attrx.service.http.asgi`, 429 past the
in-flight limit, which all front-ends share), the body limit, its parser (`attrx.service.http.requests`),
image decoding and tokenising in a thread pool, then the inference process's dynamic batcher and
model (`attrx.service.engine.process`, reached through shared memory by `attrx.service.engine.client`). Every wait
after admission is bounded by the request's deadline, the server's drain deadline and the client
staying connected (`attrx.service.http.watch`); the event loop itself only parses, waits and answers.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from pydantic_core import to_json
from starlette.requests import ClientDisconnect

from attrx.service.contract.bundle import Bundle, load_bundle
from attrx.service.contract.preprocess import ImageError
from attrx.service.engine.batcher import BatchResult, DeadlineExceeded, Draining, QueueFull
from attrx.service.engine.client import EngineClient, EngineGone, EngineLink
from attrx.service.engine.shm import Arena
from attrx.service.http.admission import Admission, Ticket
from attrx.service.http.asgi import BodyLimit, Gate, RequestMetrics
from attrx.service.http.errors import ApiError, ClientGone, error_body, explain, input_error, retry_later
from attrx.service.http.requests import Product, check_options, from_model, item_id, read_batch, read_one
from attrx.service.http.schemas import (
    BatchResponse,
    ErrorResponse,
    ExtractRequest,
    ExtractResponse,
    ModelInfo,
)
from attrx.service.http.watch import Drain, Watch
from attrx.service.inference.pipeline import Pipeline, load_pipeline, warmup_product
from attrx.service.inference.predictor import InputError
from attrx.service.settings import ServeSettings
from attrx.service.telemetry.prometheus import Metrics, exposition

log = logging.getLogger("uvicorn.error")

def _calibrated_targets(settings: ServeSettings) -> list[float] | None:
    """The bundle's precision targets, for the API schema (None if the bundle cannot be read: the
    server then fails at startup with the bundle's own error). Manifest only, no file hashing."""
    try:
        return list(load_bundle(settings.bundle, verify_hashes=False).manifest.precision_targets)
    except (OSError, ValueError):
        return None


def _request_schemas(targets: list[float] | None) -> tuple[dict, dict]:
    """(JSON, multipart) request schemas; min_precision lists the calibrated targets, which are the
    only values the server takes."""
    mp = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    if targets:
        mp = {"type": "number", "enum": targets}
    js = ExtractRequest.model_json_schema()
    js["properties"]["min_precision"] = {"anyOf": [mp, {"type": "null"}],
                                         "description": js["properties"]["min_precision"].get("description", "")}
    multipart = {"type": "object", "properties": {
        "title": {"type": "string"}, "image": {"type": "string", "format": "binary"}, "min_precision": mp,
        "top_k": {"type": "integer", "minimum": 1, "maximum": 50}}}
    return js, multipart


@dataclass
class State:
    settings: ServeSettings
    bundle: Bundle
    pipeline: Pipeline
    metrics: Metrics
    engine: EngineClient
    link: EngineLink
    pool: ThreadPoolExecutor
    admission: Admission
    ready: bool = False
    drained: bool | None = None
    model_ref: dict = field(default_factory=dict)


def _lower_priority(nice: int) -> None:
    """A decoding thread runs behind its process's event loop: under overload the loop, which
    answers 429s and finished requests, gets the CPU first (Linux: niceness is per thread)."""
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except (AttributeError, OSError):
            pass


def _load(settings: ServeSettings, link: EngineLink) -> State:
    bundle, pipeline = load_pipeline(settings, with_backend=False)
    m = bundle.manifest
    metrics = Metrics([a.name for a in m.attributes])
    engine = EngineClient(link.sock, Arena(link.layout, link.slots, name=link.arena))
    return State(settings, bundle, pipeline, metrics, engine, link,
                 ThreadPoolExecutor(settings.preprocess_workers, thread_name_prefix="attrx-pre",
                                    initializer=_lower_priority, initargs=(settings.preprocess_nice,)),
                 Admission(settings.max_in_flight, shared=link.admission),
                 model_ref={"name": m.name, "version": m.version})


async def _warm_up(st: State, engine_ready) -> None:
    """This process's preprocessing, then one product through the inference process once it is
    warm (it ran full batches); ready afterwards."""
    s = st.settings
    loop = asyncio.get_running_loop()
    try:
        item = await loop.run_in_executor(st.pool, st.pipeline.decode, *warmup_product())
        while not await loop.run_in_executor(None, engine_ready.wait, 1.0):
            if st.engine.gone:
                raise EngineGone("the inference process stopped while warming up")
        fut, _ = st.engine.submit(item, time.monotonic() + 60.0, counted=False)
        await fut
    except Exception:
        log.exception("attrx: warm-up failed; the server stays not ready")
        return
    # the objects of startup (bundle, tokenizer, modules) live as long as the process: keep them out
    # of the collector's full passes, which otherwise scan them all and stall the event loop
    gc.collect()
    gc.freeze()
    st.ready = True
    st.metrics.ready.set(1)
    _count_warm(st, +1)
    log.info("attrx: %s %s ready in front-end %d (%s %s, batch <= %d, delay %.1f ms, in flight <= %d)",
             st.model_ref["name"], st.model_ref["version"], os.getpid(), st.link.info["providers"][0],
             st.link.info["precision"],
             s.max_batch_size, s.max_queue_delay_ms, s.max_in_flight)


def _count_warm(st: State, n: int) -> None:
    count, lock = st.link.warm
    with lock:
        count.value += n


def _json(payload: dict) -> Response:
    # pydantic-core's encoder (Rust) instead of the json module: a per-request cost on the event loop
    return Response(to_json(payload), media_type="application/json")


class Service:
    """The routes' work, on the state the lifespan loads."""

    def __init__(self, settings: ServeSettings, link: EngineLink):
        self.settings, self.link = settings, link
        self.drain = Drain()
        self.state: State | None = None
        self.gate: Gate | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """SIGTERM/SIGINT: not ready from now on; work that cannot finish in time is answered 503."""
        self.drain.begin(self.settings.drain_timeout_s)
        st = self.state
        if st is not None:
            if st.ready:
                _count_warm(st, -1)
            st.ready = False
            st.metrics.ready.set(0)
            # the supervisor tells the inference process to run what is queued without waiting

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        st = self.state = _load(self.settings, self.link)
        self.gate = Gate(st.admission, st.metrics)
        app.state.attrx = st
        st.engine.start()
        warm = asyncio.create_task(_warm_up(st, self.link.ready))
        try:
            yield
        finally:
            warm.cancel()
            self.begin_drain()
            left = max(0.1, self.drain.deadline - time.monotonic())
            done = await st.engine.settled(left)
            st.engine.close()
            st.pool.shutdown(wait=False, cancel_futures=True)
            refused = self.drain.refused
            st.drained = done and refused == 0
            log.info("attrx: stopped (%s)", "drained" if st.drained else
                     f"drain timed out after {self.settings.drain_timeout_s:g} s: {refused} refused with 503")

    def ready_state(self, admitted: bool = False) -> State:
        """The loaded state, or 503. A request the gate admitted before a drain began is served
        (the drain deadline still bounds it); a new one is refused while draining."""
        st = self.state
        if st is None or not st.ready:
            if self.drain.draining:
                if admitted and st is not None:
                    return st
                raise retry_later(503, "draining", "the server is shutting down")
            raise retry_later(503, "not_ready", "the model is loading or warming up")
        return st

    def reject(self, reason: str) -> None:
        if reason == "draining":
            self.drain.refused += 1
        if self.state is not None:
            self.state.metrics.rejections.labels(reason).inc()

    # -- one product --------------------------------------------------------------------------
    async def run(self, p: Product, watch: Watch, ticket: Ticket | None) -> BatchResult:
        st = self.state
        watch.check("decoding")
        fut = st.pool.submit(st.pipeline.decode, p.title, p.image)
        if ticket is not None:
            ticket.hold(fut)
        try:
            inputs = await watch.wait(fut, "decoding")
        except (ImageError, InputError) as e:
            raise input_error(e) from None
        watch.check("queueing")
        try:
            job, slot = st.engine.submit(inputs, watch.deadline)
            if ticket is not None:
                ticket.hold(job)
            return await watch.wait(job, "running", cancel=partial(st.engine.cancel, slot))
        except QueueFull as e:
            raise retry_later(429, "queue_full", f"{e}; retry shortly") from None
        except DeadlineExceeded:  # counted by the batcher
            raise ApiError(504, "timeout", f"not run within {watch.timeout_ms:.0f} ms", counted=True) from None
        except Draining as e:
            raise retry_later(503, "draining", str(e)) from None
        except EngineGone as e:
            raise retry_later(503, "not_ready", str(e)) from None

    def watch(self, request: Request, t0: float) -> Watch:
        ms = self.settings.request_timeout_ms
        return Watch(request.receive, t0 + ms / 1000.0, self.drain, ms)

    def precision_key(self, st: State, min_precision: float | None) -> str:
        try:
            return st.pipeline.predictor.precision_key(min_precision)
        except InputError as e:
            raise input_error(e) from None

    async def extract(self, request: Request) -> JSONResponse:
        t0 = time.monotonic()
        st = self.ready_state(admitted="attrx.ticket" in request.scope)
        watch = self.watch(request, t0)
        try:
            p = await read_one(request)
            check_options(p)
            key = self.precision_key(st, p.min_precision)
            res = await self.run(p, watch, request.scope.get("attrx.ticket"))
        finally:
            watch.close()
        preds = st.pipeline.encode_response(res.outputs, res.row, key=key, top_k=p.top_k)
        return _json({"model": st.model_ref, "min_precision": key, "predictions": preds,
                             "latency_ms": round((time.monotonic() - t0) * 1000, 3)})

    # -- a batch of products ------------------------------------------------------------------
    async def _batch_item(self, st: State, i: int, raw, watch: Watch, ticket: Ticket) -> dict:
        pid = item_id(raw)
        try:
            p = from_model(ExtractRequest.model_validate(raw))
            key = self.precision_key(st, p.min_precision)
            res = await self.run(p, watch, ticket)
        except ApiError as e:
            if not e.counted:
                self.reject(e.reason)
            return {"index": i, "id": pid, "error": {"reason": e.reason, "message": e.message}}
        except ValidationError as e:
            self.reject("bad_request")
            return {"index": i, "id": pid, "error": {"reason": "bad_request", "message": explain(e)}}
        except ClientGone:
            return {"index": i, "gone": True}
        preds = st.pipeline.encode_response(res.outputs, res.row, key=key, top_k=p.top_k)
        return {"index": i, "id": p.id, "min_precision": key, "predictions": preds}

    async def extract_batch(self, request: Request) -> JSONResponse:
        t0 = time.monotonic()
        st = self.ready_state(admitted="attrx.ticket" in request.scope)
        watch = self.watch(request, t0)
        try:
            body = await read_batch(request, self.settings.max_batch_items)
            ticket = st.admission.try_acquire(len(body))
            if ticket is None:
                raise retry_later(429, "overloaded", f"{len(body)} products do not fit under the server's limit "
                                                     f"of {st.admission.limit} in flight; retry shortly")
            try:
                results = await asyncio.gather(*(self._batch_item(st, i, raw, watch, ticket)
                                                 for i, raw in enumerate(body)))
            finally:
                ticket.close()
        finally:
            watch.close()
        if any(r.get("gone") for r in results):
            raise ClientGone
        return _json({"model": st.model_ref, "results": results,
                             "latency_ms": round((time.monotonic() - t0) * 1000, 3)})

    # -- the rest -----------------------------------------------------------------------------
    def model_info(self, st: State) -> ModelInfo:
        m, s = st.bundle.manifest, st.settings
        return ModelInfo(
            name=m.name, version=m.version, family=m.model.family, created=m.created,
            precision_targets=m.precision_targets,
            attributes=[{"name": a.name, "classes": a.classes, "thresholds": a.thresholds, "support": a.support}
                        for a in m.attributes],
            metrics=m.metrics, backend=st.link.info["backend"], providers=st.link.info["providers"],
            precision=st.link.info["precision"], variant=st.link.info["variant"], variants=list(m.variants),
            batching={"max_batch_size": s.max_batch_size, "max_queue_delay_ms": s.max_queue_delay_ms,
                      "max_queue_size": s.max_queue_size, "max_in_flight": s.max_in_flight,
                      "request_timeout_ms": s.request_timeout_ms},
        )

    def readyz(self) -> JSONResponse:
        try:
            st = self.ready_state()
        except ApiError as e:
            return JSONResponse(error_body(e.reason, e.message), status_code=503, headers=e.headers)
        warm, workers = st.link.warm[0].value, st.link.workers
        if warm < workers:  # this process is ready, not yet every one that shares the socket
            return JSONResponse(error_body("not_ready", f"{warm} of {workers} front-end processes are ready"),
                                status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ready", "model": st.model_ref})

    def metrics(self) -> Response:
        st = self.state
        if st is None:
            return Response("", media_type=CONTENT_TYPE_LATEST)
        st.metrics.in_flight.set(st.admission.in_flight)
        body, media_type = exposition(st.metrics.registry)
        return Response(body, media_type=media_type)


def _docs(app: FastAPI) -> None:
    """/docs with Swagger UI's files served from this process: the page works on an offline network."""
    import fastapi_offline

    static = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs-static", StaticFiles(directory=static), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="attrx API",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon.png")


def _error_handlers(app: FastAPI, svc: Service) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        if not e.counted:
            svc.reject(e.reason)
        return JSONResponse(error_body(e.reason, e.message), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        svc.reject("bad_request")
        msg = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        return JSONResponse(error_body("bad_request", msg), status_code=422)

    @app.exception_handler(ClientGone)
    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, e: Exception):
        # the client hung up (while sending its body, or while its work waited): nobody to answer
        svc.reject("client_gone")
        return Response(status_code=499)


def _routes(app: FastAPI, svc: Service) -> None:
    json_schema, multipart_schema = _request_schemas(_calibrated_targets(svc.settings))

    async def require_key(request: Request) -> None:
        key = svc.settings.api_key
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API key (send 'Authorization: Bearer <key>')",
                           {"WWW-Authenticate": "Bearer"})

    # resolving a dependency costs every request: none at all when no key is set
    auth = [Depends(require_key)] if svc.settings.api_key else []

    @app.post("/v1/extract", response_model=ExtractResponse, dependencies=auth,
              summary="Attributes of one product",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": json_schema},
                  "multipart/form-data": {"schema": multipart_schema}}}})
    async def extract(request: Request):
        """One product as multipart (`title` field, `image` file) or JSON (`title`, `image_base64`).
        Either may be absent, not both."""
        return await svc.extract(request)

    @app.post("/v1/extract/batch", response_model=BatchResponse, dependencies=auth,
              summary="Attributes of several products",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "array", "items": json_schema}}}}})
    async def extract_batch(request: Request):
        """A JSON list of products (each as in /v1/extract's JSON form). One failed item gets its own
        error entry and does not fail the others."""
        return await svc.extract_batch(request)

    def model_handle() -> State:
        """The loaded model, as a dependency (503 while loading or draining)."""
        return svc.ready_state()

    @app.get("/v1/model", response_model=ModelInfo, dependencies=auth,
             summary="The served bundle: attributes, classes, thresholds, training metrics")
    async def model_info(st: State = Depends(model_handle)):
        return svc.model_info(st)

    @app.get("/healthz", summary="The process is alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="200 once the bundle is loaded and warmed up; 503 before and while draining",
             responses={503: {"model": ErrorResponse}})
    async def readyz():
        return svc.readyz()

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        return svc.metrics()


class AttrxApp(FastAPI):
    """FastAPI with the admission gate in front of everything else it does per request."""

    service: Service

    async def __call__(self, scope, receive, send):
        gate = self.service.gate
        if gate is None or scope["type"] != "http" or scope["path"] not in Gate.PATHS:
            return await super().__call__(scope, receive, send)
        # admitted already by the HTTP protocol (`attrx.service.http.frontend`), or decided here
        ticket = scope["attrx.ticket"] if "attrx.admitted" in scope else gate.admit(scope["path"])
        if ticket is False:
            return await gate.refuse(scope["path"], send)
        scope["attrx.ticket"] = ticket
        try:
            await super().__call__(scope, receive, send)
        finally:
            if ticket is not None:
                ticket.close()


def _telemetry_off() -> dict:
    import inspect

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:  # FastAPI before native OTel
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}


def create_app(settings: ServeSettings, link: EngineLink) -> FastAPI:
    """The front-end app of one process, serving through the inference process behind `link`."""
    svc = Service(settings, link)
    app = AttrxApp(
        title="attrx",
        description="Product attribute extraction from a title and an image (CMA-CLIP multi-task model).",
        version="0.1.0", lifespan=svc.lifespan, docs_url=None, redoc_url=None,
        responses={code: {"model": ErrorResponse} for code in (401, 408, 413, 415, 422, 429, 503, 504)},
        # FastAPI's own OpenTelemetry asks the global providers on every request whether it is on;
        # attrx reports through Prometheus, so it is off outright
        **_telemetry_off(),
    )
    app.state.service = app.service = svc
    st = lambda: svc.state  # noqa: E731
    app.add_middleware(BodyLimit, limit=svc.settings.max_body_bytes, on_reject=lambda: svc.reject("too_large"))
    app.add_middleware(RequestMetrics, get_metrics=lambda: st().metrics if st() else None)
    _error_handlers(app, svc)
    _routes(app, svc)
    _docs(app)
    return app
