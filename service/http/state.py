"""A front-end's loaded state: the bundle, its Predictor (decoding and encoding only: no backend), the metrics,
the engine client and the decoding pool; warm-up."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from attrx.service.contract.bundle import Bundle, sha256_file
from attrx.service.engine.client import BatchFailed, EngineClient, EngineGone, EngineLink
from attrx.service.engine.shm import Arena
from attrx.service.http.admission import Admission
from attrx.service.http.drift_report import FrontDrift
from attrx.service.http.schemas import AttributeInfo, ModelInfo
from attrx.service.inference.predictor import Predictor, load_predictor, warmup_product
from attrx.service.settings import ServeSettings
from attrx.service.telemetry.prometheus import Metrics

log = logging.getLogger("uvicorn.error")
WARMUP_TRIES = 5


@dataclass
class State:
    settings: ServeSettings
    bundle: Bundle
    predictor: Predictor
    metrics: Metrics
    engine: EngineClient
    link: EngineLink
    pool: ThreadPoolExecutor
    admission: Admission
    ready: bool = False
    drained: bool | None = None
    model_ref: dict = field(default_factory=dict)
    bundle_id: str = ""  # sha256 of the manifest, which lists every file's sha256
    drift: FrontDrift | None = None  # None: drift telemetry is off (--drift-window 0)


def lower_priority(nice: int) -> None:
    """A decoding thread runs behind its process's event loop: under overload the loop, which
    answers 429s and finished requests, gets the CPU first (Linux: niceness is per thread)."""
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except (AttributeError, OSError):
            pass


def load_state(settings: ServeSettings, link: EngineLink) -> State:
    predictor = load_predictor(settings, with_backend=False)
    bundle = predictor.bundle
    m = bundle.manifest
    metrics = Metrics([a.name for a in m.attributes])
    engine = EngineClient(link.sock, Arena(link.layout, link.slots, name=link.arena))
    return State(settings, bundle, predictor, metrics, engine, link,
                 ThreadPoolExecutor(settings.preprocess_threads, thread_name_prefix="attrx-pre",
                                    initializer=lower_priority, initargs=(settings.preprocess_nice,)),
                 Admission(settings.max_in_flight, shared=(link.admission, link.index)),
                 model_ref={"name": m.name, "version": m.version},
                 bundle_id=sha256_file(bundle.path / "manifest.json"),
                 drift=FrontDrift(m, link.info["drift"], settings.drift_reference)
                 if link.info.get("drift") else None)


async def warm_up(st: State, engine_ready) -> None:
    """This process's preprocessing, then one product through the inference process once it is
    warm (it ran full batches); ready afterwards."""
    s = st.settings
    loop = asyncio.get_running_loop()
    try:
        item, _ = await loop.run_in_executor(st.pool, st.predictor.decode_request, *warmup_product())
        while not await loop.run_in_executor(None, engine_ready.wait, 1.0):
            if st.engine.gone:
                raise EngineGone("the inference process stopped while warming up")
        for attempt in range(WARMUP_TRIES):  # a batch that failed is not a model that cannot run
            fut, _ = st.engine.submit(item, time.monotonic() + 60.0, counted=False)
            try:
                await fut
                break
            except BatchFailed:
                if attempt == WARMUP_TRIES - 1:
                    raise
    except Exception:
        log.exception("attrx: warm-up failed; the server stays not ready")
        return
    # the objects of startup (bundle, tokenizer, modules) live as long as the process: keep them out
    # of the collector's full passes, which otherwise scan them all and stall the event loop
    gc.collect()
    gc.freeze()
    st.ready = True
    st.metrics.ready.set(1)
    count_warm(st, +1)
    log.info("attrx: %s %s ready in front-end %d (%s %s, %s batching, batch <= %d, delay <= %.1f ms, "
             "in flight <= %d)", st.model_ref["name"], st.model_ref["version"], os.getpid(),
             st.link.info["providers"][0], st.link.info["precision"], s.batching,
             s.max_batch_size, s.max_queue_delay_ms, s.max_in_flight)


def count_warm(st: State, n: int) -> None:
    """This front-end's entry of the server's ready count (its own entry only: see shared_counter)."""
    st.link.warm[st.link.index] += n


def model_info(st: State) -> ModelInfo:
    """What GET /v1/model answers."""
    m, s = st.bundle.manifest, st.settings
    return ModelInfo(
        name=m.name, version=m.version, family=m.model.family, created=m.created,
        precision_targets=m.precision_targets, situation_calibrated=m.situation_calibrated,
        attributes=[_attribute_info(a) for a in m.attributes],
        constraints=m.constraints.model_dump() if m.constraints else None,
        metrics=m.metrics, backend=st.link.info["backend"], providers=st.link.info["providers"],
        precision=st.link.info["precision"], variant=st.link.info["variant"], variants=list(m.variants),
        batching={"policy": s.batching, "max_batch_size": s.max_batch_size,
                  "max_queue_delay_ms": s.max_queue_delay_ms, "max_queue_size": s.max_queue_size,
                  "max_in_flight": s.max_in_flight, "request_timeout_ms": s.request_timeout_ms,
                  "dedup": s.dedup, "response_cache": s.response_cache},
        limits={"max_request_items": s.max_request_items, "max_body_bytes": s.max_body_bytes,
                "max_title_chars": s.max_title_chars},
    )


def _attribute_info(a) -> AttributeInfo:
    return AttributeInfo.model_validate(a.model_dump(include={"name", "classes", "thresholds", "support",
                                                              "situations", "conflict", "folded_class", "label_variants",
                                                              "families"}))
