"""What the routes do: admission, reading a request, waiting on the engine under the request's
deadline, the drain and the client, and answering; `/v1/model`, `/readyz` and `/metrics`."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from pydantic_core import to_json

from attrx.service.contract.decode import situations_of
from attrx.service.contract.preprocess import ImageError
from attrx.service.engine.batcher import BatchResult, DeadlineExceeded, Draining, QueueFull
from attrx.service.engine.client import BatchFailed, DriftOff, EmptyWindow, EngineGone, EngineLink, Miss
from attrx.service.http.admission import Ticket
from attrx.service.http.asgi import Gate
from attrx.service.http.dedup import InFlight, ResponseCache, Shared, SharedKeys, engine_key, product_key
from attrx.service.http.errors import (
    ApiError,
    ClientGone,
    explain,
    input_error,
    problem_response,
    retry_later,
)
from attrx.service.http.health import Health
from attrx.service.http.image_url import ImageUrls
from attrx.service.http.requests import (
    ProductRequest,
    check_options,
    from_model,
    item_id,
    read_batch,
    read_one,
)
from attrx.service.http.schemas import ExtractRequest, ModelInfo
from attrx.service.http.state import State, count_warm, load_state, model_info, warm_up
from attrx.service.http.traces import engine_tag, span_until, tracer_for
from attrx.service.http.watch import Drain, Watch
from attrx.service.inference.predictor import InputError
from attrx.service.settings import ServeSettings
from attrx.service.telemetry.prometheus import exposition

log = logging.getLogger("uvicorn.error")


def _json(payload: dict) -> Response:
    # pydantic-core's encoder (Rust) instead of the json module: a per-request cost on the event loop
    return Response(to_json(payload), media_type="application/json")


class Endpoints:
    """The routes' work, on the state the lifespan loads."""

    def __init__(self, settings: ServeSettings, link: EngineLink | None):
        self.settings, self.link = settings, link
        self.drain = Drain()
        self.state: State | None = None
        self.gate: Gate | None = None
        self.inflight = InFlight()
        self.keys = SharedKeys(link.keys if link is not None else None)  # None: an app only read for its schema
        self.cache = ResponseCache(0, "")  # off until the lifespan knows the bundle
        self.health = Health(settings, link)
        self.urls = ImageUrls(settings)  # image_url: off unless the settings allow hosts
        self.tracer = tracer_for(settings, link)

    @property
    def loaded(self) -> State:
        """The state, for work that runs only after the lifespan loaded it."""
        if self.state is None:
            raise RuntimeError("the front-end's state is not loaded")
        return self.state

    # -- lifecycle ----------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """SIGTERM/SIGINT: not ready from now on; work that cannot finish in time is answered 503."""
        self.drain.begin(self.settings.drain_timeout_s)
        st = self.state
        if st is not None:
            if st.ready:
                count_warm(st, -1)
            st.ready = False
            st.metrics.ready.set(0)
            # the supervisor tells the inference process to run what is queued without waiting

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        link = self.link
        if link is None:
            raise RuntimeError("this app was built for its schema only (no inference process to serve from)")
        st = self.state = load_state(self.settings, link)
        self.gate = Gate(st.admission, st.metrics)
        self.cache = ResponseCache(self.settings.response_cache, st.bundle_id)
        app.state.attrx = st
        st.engine.start()
        beat = self.health.start(lambda: self.loaded)
        warm = asyncio.create_task(warm_up(st, link.ready))
        if link.restarted:
            # the server is up and its other front-ends serve: this one takes connections (they wait
            # in its socket's backlog meanwhile) only once it can answer them, not with 503s
            await asyncio.shield(warm)
        try:
            yield
        finally:
            warm.cancel()
            beat.cancel()
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
    async def run(self, p: ProductRequest, watch: Watch, ticket: Ticket | None,
                  key: bytes | None = None) -> tuple[BatchResult, list[str]]:
        """The product's row of its batch's outputs, and its situation per attribute. A product
        already in flight here (same title and image bytes) is not decoded or run again: this
        request waits on that work."""
        watch.check("decoding")
        if not self.settings.dedup:
            key = None
        elif key is None:
            key = product_key(p.title, p.image)
        shared = self.inflight.join(key) if key is not None else None
        started = shared is None
        if shared is None:
            shared = self.inflight.start(key, lambda s: self._work(s, p, watch.deadline, ticket))
        task = shared.task
        assert task is not None  # a Shared is started before it is joined
        if not started:
            self.loaded.metrics.shared.inc()
            if ticket is not None:
                ticket.hold(task)
        try:
            return await watch.wait(task, "running", cancel=shared.leave)
        except (ImageError, InputError) as e:
            raise input_error(e) from None
        except QueueFull as e:
            raise retry_later(429, "queue_full", f"{e}; retry shortly") from None
        except DeadlineExceeded:  # expired in the engine's queue: counted here, as every 504 is
            raise ApiError(504, "timeout", f"not run within {watch.timeout_ms:.0f} ms") from None
        except Draining as e:
            raise retry_later(503, "draining", str(e)) from None
        except EngineGone as e:
            raise retry_later(503, "not_ready", str(e)) from None
        except BatchFailed as e:
            raise ApiError(500, "batch_failed", str(e)) from None
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if task.cancelled() and not (me is not None and me.cancelling()):
                # the work was stopped by the others who waited on it, after this one's deadline
                raise ApiError(504, "timeout", f"not run within {watch.timeout_ms:.0f} ms") from None
            raise

    async def _work(self, s: Shared, p: ProductRequest, deadline: float, ticket: Ticket | None):
        """One product's work, shared by every request waiting on it: followed from another
        front-end that is working on it (through the engine), else done here."""
        key = engine_key(s.key)
        if self.keys.seen(key):
            followed = await self._follow(s, p, key, deadline, ticket)
            if followed is not None:
                return followed
            if s.waiters == 0:
                return None  # a miss, and nobody waits any more
        if not key:
            return await self._lead(s, p, 0, deadline, ticket)
        self.keys.add(key)
        self.loaded.engine.lead(key)
        try:
            return await self._lead(s, p, key, deadline, ticket)
        finally:
            self.keys.discard(key)

    async def _follow(self, s: Shared, p: ProductRequest, key: int, deadline: float, ticket: Ticket | None):
        """The output of another front-end's work on this product, or None (a miss: nobody leads it now)."""
        st = self.loaded
        job, slot = st.engine.follow(key, deadline, tag=engine_tag(self.tracer))
        s.cancel_queued = partial(st.engine.cancel, slot)
        if ticket is not None:
            ticket.hold(job)
        try:
            res = await asyncio.shield(job)
        except Miss:
            s.cancel_queued = None
            return None
        st.metrics.shared.inc()
        if res.profile is None:  # (a layout without profiles: not one attrx serve makes)
            return res, st.predictor.situations(p.title, p.image)
        return res, situations_of(res.profile, len(st.predictor.attributes))

    async def _lead(self, s: Shared, p: ProductRequest, key: int, deadline: float, ticket: Ticket | None):
        """Decoding, then the engine. The first request's ticket holds each stage, so admission
        bounds the work. A lead that ends before it is queued tells the engine (its followers
        then do the work themselves)."""
        st = self.loaded
        queued = False
        try:
            fut = s.decoding = st.pool.submit(st.predictor.decode_request, p.title, p.image)
            if self.tracer is not None:
                span_until(self.tracer, "attrx.decode", fut)
            if ticket is not None:
                ticket.hold(fut)
            inputs, situations = await asyncio.wrap_future(fut)
            s.decoding = None
            if s.waiters == 0:
                return None  # everyone left while it decoded: never queued
            now = time.monotonic()
            if now >= self.drain.deadline:
                raise retry_later(503, "draining", "the server is shutting down")
            if now >= deadline:
                raise ApiError(504, "timeout", f"the deadline of {self.settings.request_timeout_ms:.0f} ms passed "
                                               "before queueing")
            job, slot = st.engine.submit(inputs, deadline, key=key, tag=engine_tag(self.tracer))
            queued = True
        finally:
            if key and not queued:
                st.engine.drop(key)
        s.cancel_queued = partial(st.engine.cancel, slot)
        if ticket is not None:
            ticket.hold(job)
        return await asyncio.shield(job), situations

    def watch(self, request: Request, t0: float) -> Watch:
        ms = self.settings.request_timeout_ms
        return Watch(request.receive, t0 + ms / 1000.0, self.drain, ms)

    def precision_key(self, st: State, min_precision: float | None) -> str:
        try:
            return st.predictor.precision_key(min_precision)
        except InputError as e:
            raise input_error(e) from None

    async def extract(self, request: Request) -> Response:
        t0 = time.monotonic()
        st = self.ready_state(admitted="attrx.ticket" in request.scope)
        self.health.check_progress(st)
        watch = self.watch(request, t0)
        try:
            p = await read_one(request)
            check_options(p)
            key = self.precision_key(st, p.min_precision)
            preds, evidence = await self.predictions(st, p, key, watch, request.scope.get("attrx.ticket"))
        finally:
            watch.close()
        body = {"model": st.model_ref, "min_precision": key, "predictions": preds}
        if evidence is not None:
            body["evidence"] = evidence
        return _json({**body, "latency_ms": round((time.monotonic() - t0) * 1000, 3)})

    async def predictions(self, st: State, p: ProductRequest, key: str, watch: Watch,
                          ticket: Ticket | None) -> tuple[dict, dict | None]:
        """One product's predictions, and the image's evidence for its title words when the bundle
        has a concept head (else None): from the response cache when it is on and holds them."""
        p, cache = await self.urls.fill(p), self.cache
        pk = product_key(p.title, p.image) if cache.on or self.settings.dedup else None  # hashed once
        ck = cache.key(pk, (key, p.top_k)) if cache.on and pk is not None else None
        if ck is not None:
            found = cache.get(ck)
            st.metrics.cache.labels("miss" if found is None else "hit").inc()
            if found is not None:
                return found
        res, situations = await self.run(p, watch, ticket, pk)
        preds = st.predictor.encode_response(res.outputs, res.row, key=key, situations=situations, top_k=p.top_k)
        found = (preds, st.predictor.evidence(res.outputs, res.row))
        if ck is not None:
            cache.put(ck, found)
        return found

    # -- a batch of products ------------------------------------------------------------------
    async def _batch_item(self, st: State, i: int, raw, watch: Watch, ticket: Ticket) -> dict:
        pid = item_id(raw)
        try:
            p = from_model(ExtractRequest.model_validate(raw))
            key = self.precision_key(st, p.min_precision)
            preds, evidence = await self.predictions(st, p, key, watch, ticket)
        except ApiError as e:
            if not e.counted:
                self.reject(e.reason)
            return {"index": i, "id": pid, "error": {"reason": e.reason, "message": e.message}}
        except ValidationError as e:
            self.reject("bad_request")
            return {"index": i, "id": pid, "error": {"reason": "bad_request", "message": explain(e)}}
        except ClientGone:
            return {"index": i, "gone": True}
        item = {"index": i, "id": p.id, "min_precision": key, "predictions": preds}
        return item if evidence is None else {**item, "evidence": evidence}

    async def extract_batch(self, request: Request) -> Response:
        t0 = time.monotonic()
        st = self.ready_state(admitted="attrx.ticket" in request.scope)
        self.health.check_progress(st)
        watch = self.watch(request, t0)
        try:
            body = await read_batch(request, self.settings.max_request_items)
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
        return model_info(st)

    def drift(self, st: State) -> dict:
        if st.drift is None:
            raise ApiError(404, "drift_off", "drift telemetry is off (attrx serve --drift-window 0)")
        return st.drift.compare()

    async def rebaseline(self, st: State, source: str) -> dict:
        if st.drift is None:
            raise ApiError(404, "drift_off", "drift telemetry is off (attrx serve --drift-window 0)")
        try:
            fut, _ = st.engine.baseline(source)
            result = await asyncio.wait_for(fut, st.settings.request_timeout_ms / 1000)
        except EmptyWindow as e:
            raise ApiError(409, "empty_window", str(e)) from None
        except DriftOff:
            raise ApiError(404, "drift_off", "drift telemetry is off in the inference process") from None
        except OSError as e:
            raise ApiError(500, "not_written", f"drift reference {st.drift.reference_path}: {e}") from None
        except (EngineGone, QueueFull, asyncio.TimeoutError):
            raise retry_later(503, "unavailable", "the inference process did not take the re-baseline; retry") \
                from None
        done = st.drift.baselined(source, result.batch_size)
        log.info("attrx: drift reference is now %s (%d products)%s", done["source"], done["items"],
                 f", written to {done['file']}" if done["file"] else "")
        return done

    def readyz(self) -> Response:
        try:
            st = self.ready_state()
            self.health.check_progress(st)
        except ApiError as e:
            return problem_response(503, e.reason, e.message, e.headers)
        warm, workers = sum(st.link.warm), st.link.workers
        if warm < workers:  # this process is ready, not yet every one that shares the socket
            return problem_response(503, "not_ready", f"{warm} of {workers} front-end processes are ready",
                                    {"Retry-After": "1"})
        return JSONResponse({"status": "ready", "model": st.model_ref})

    def livez(self) -> Response:
        return self.health.livez(self.state)

    def metrics(self) -> Response:
        st = self.state
        if st is None:
            return Response("", media_type=CONTENT_TYPE_LATEST)
        st.metrics.in_flight.set(st.admission.in_flight)
        if st.drift is not None:
            st.metrics.set_drift(st.drift.compare())
        body, media_type = exposition(st.metrics.registry)
        return Response(body, media_type=media_type)
