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

import logging
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from attrx.service.engine.client import EngineLink
from attrx.service.http.asgi import BodyLimit, Gate, RequestMetrics
from attrx.service.http.auth import admin_guard, inference_guard
from attrx.service.http.endpoints import Endpoints
from attrx.service.http.errors import ApiError, ClientGone, problem_response
from attrx.service.http.problems import MEDIA_TYPE, describe
from attrx.service.http.request_id import current, from_headers
from attrx.service.http.schemas import (
    BatchResponse,
    ExtractResponse,
    ModelInfo,
    Problem,
    calibrated_targets,
    request_schemas,
)
from attrx.service.http.state import State
from attrx.service.http.traces import traced_call
from attrx.service.settings import ServeSettings
from attrx.version import __version__

log = logging.getLogger("uvicorn.error")


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


def _error_handlers(app: FastAPI, svc: Endpoints) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        if not e.counted:
            svc.reject(e.reason)
        return problem_response(e.status, e.reason, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        msg = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        reason = "malformed_json" if any(err.get("type") == "json_invalid" for err in e.errors()) else "bad_request"
        svc.reject(reason)
        return problem_response(400 if reason == "malformed_json" else 422, reason, msg)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        reason = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "bad_request")
        return problem_response(e.status_code, reason, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(ClientGone)
    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, e: Exception):
        # the client hung up (while sending its body, or while its work waited): nobody to answer
        svc.reject("client_gone")
        return Response(status_code=499)


# an error answer in the OpenAPI document: the Problem schema under its own media type
PROBLEM = {"model": Problem, "content": {MEDIA_TYPE: {}}}

# documented on the operations that take a body; every route takes it (attrx.service.http.request_id)
REQUEST_ID_PARAMETER = {"name": "X-Request-ID", "in": "header", "required": False,
                        "description": "your id for this request, echoed in the answer's X-Request-ID and named in "
                                       "the server's log lines about it (else the server makes one)",
                        "schema": {"type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9._:-]+$"}}


class Baseline(BaseModel):
    source: Literal["traffic", "bundle"] = "traffic"


def _routes(app: FastAPI, svc: Endpoints) -> None:
    # a server lists its bundle's calibrated targets; the document read without one (link None) says (0, 1]
    json_schema, multipart_schema = request_schemas(calibrated_targets(svc.settings) if svc.link is not None else None)

    guard = inference_guard(svc.settings)
    auth = [Depends(guard)] if guard is not None else []
    admin = [Depends(admin_guard(svc.settings))]

    @app.post("/v1/extract", response_model=ExtractResponse, dependencies=auth,
              summary="Attributes of one product",
              openapi_extra={"parameters": [REQUEST_ID_PARAMETER], "requestBody": {"required": True, "content": {
                  "application/json": {"schema": json_schema},
                  "multipart/form-data": {"schema": multipart_schema}}}})
    async def extract(request: Request):
        """One product as multipart (`title` field, `image` file) or JSON (`title`, `image_base64`).
        Either may be absent, not both."""
        return await svc.extract(request)

    @app.post("/v1/extract/batch", response_model=BatchResponse, dependencies=auth,
              summary="Attributes of several products",
              openapi_extra={"parameters": [REQUEST_ID_PARAMETER], "requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"type": "array", "items": json_schema}}}}})
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

    @app.get("/v1/drift", dependencies=auth, summary="The drift window compared with the reference")
    async def drift(st: State = Depends(model_handle)):
        """Per attribute and statistic the Jensen-Shannon distance of the last products served
        from the reference, the accepted rate and the situation mix of both; the input statistics;
        which thresholds are exceeded (once the window is full)."""
        return svc.drift(st)

    @app.post("/v1/drift/baseline", dependencies=admin, summary="Make recent traffic the drift reference (admin key)",
              responses={403: PROBLEM})
    async def drift_baseline(body: Baseline | None = None, st: State = Depends(model_handle)):
        """`{"source": "traffic"}` (the default): the window's products become the reference, in every
        process, and with `--drift-reference FILE` in that file too, so a restart keeps it.
        `{"source": "bundle"}`: back to the bundle's reference. Needs the admin key (`ATTRX_ADMIN_KEY`);
        off (403) without one."""
        return await svc.rebaseline(st, (body or Baseline()).source)

    @app.get("/problems/{reason}", summary="What an error answer's type means", tags=["errors"],
             responses={404: PROBLEM})
    async def problem_type(reason: str):
        """An error answer's `type` is `/problems/{reason}`: this says what the reason means."""
        found = describe(reason)
        if found is None:
            raise ApiError(404, "not_found", f"no problem type {reason!r}", counted=True)
        return found

    @app.get("/healthz", summary="This front-end process answers (it says nothing about progress: see /livez)")
    async def healthz():
        return {"status": "ok"}

    @app.get("/livez", summary="Liveness: 503 once the inference process or this front-end has made no progress "
                               "for liveness_timeout_s", responses={503: PROBLEM})
    async def livez():
        return svc.livez()

    @app.get("/readyz", summary="Readiness: 200 once the bundle is loaded and warmed up; 503 before, while draining "
                                "and while work waits past the stall bound", responses={503: PROBLEM})
    async def readyz():
        return svc.readyz()

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        return svc.metrics()


class AttrxApp(FastAPI):
    """FastAPI with the admission gate in front of everything else it does per request."""

    service: Endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        rid = from_headers(scope["headers"])
        token = current.set(rid)
        header = (b"x-request-id", rid.encode())

        async def send_with_id(msg):
            if msg["type"] == "http.response.start":
                msg["headers"] = [*msg.get("headers", ()), header]
            await send(msg)

        try:
            tracer = self.service.tracer
            if tracer is not None and scope["path"] in Gate.PATHS:  # the extract routes
                await traced_call(tracer, self._admitted, scope, receive, send_with_id)
            else:
                await self._admitted(scope, receive, send_with_id)
        finally:
            current.reset(token)

    async def _admitted(self, scope, receive, send):
        gate = self.service.gate
        if gate is None or scope["path"] not in Gate.PATHS:
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


def create_app(settings: ServeSettings, link: EngineLink | None) -> FastAPI:
    """The front-end app of one process, serving through the inference process behind `link` (None: an
    app that is only read, for its OpenAPI document; `openapi_document`)."""
    svc = Endpoints(settings, link)
    app = AttrxApp(
        title="attrx",
        description="Product attribute extraction from a title and an image: per attribute the value, its "
                    "confidence, the modality weights and whether it is accepted in the product's situation.",
        version=__version__, lifespan=svc.lifespan, docs_url=None, redoc_url=None,
        responses={code: PROBLEM for code in (401, 408, 413, 415, 422, 429, 500, 503, 504)},
        # FastAPI's own OpenTelemetry asks the global providers on every request whether it is on;
        # attrx reports through Prometheus, so it is off outright
        **_telemetry_off(),
    )
    app.state.service = app.service = svc
    app.add_middleware(BodyLimit, limit=svc.settings.max_body_bytes, on_reject=lambda: svc.reject("too_large"))
    app.add_middleware(RequestMetrics, get_metrics=lambda: svc.state.metrics if svc.state is not None else None)
    _error_handlers(app, svc)
    _routes(app, svc)
    _docs(app)
    return app


def openapi_document() -> dict:
    """The HTTP API's OpenAPI document, as `/openapi.json` serves it but without a bundle or an inference
    process (so `min_precision` is any number in (0, 1] rather than a bundle's calibrated targets): the
    documentation site's API reference is generated from it. The settings are the defaults, not this
    shell's ATTRX_ variables (model_construct reads no environment), so the document is the same anywhere."""
    return create_app(ServeSettings.model_construct(), None).openapi()
