"""The inference process: one model, one dynamic batcher, fed by every front-end process.

Front-ends (`attrx.service.http.frontend.frontend_main`, `attrx.service.http.app`) write a decoded product into a slot of their shared-memory arena
(`attrx.service.engine.shm`) and send "slot k, deadline t" through a Unix socket. A reader thread per front-end
turns each message into a batcher item whose inputs are views of the slot, so batches form across
all front-ends. When a batch has run, each item's output row is written back into its slot and the
front-end hears "slot k: done" (one write per front-end per batch). An item whose front-end has
raised the slot's cancel flag (client gone, deadline passed) is skipped when the batch forms.

The parent (`attrx.service.serving.supervisor`) drives the life cycle over a pipe: it receives the slot layout,
attaches each front-end (its socket, passed over the pipe, and its arena's name; again for a
front-end it restarted), then sends "flush" when a drain begins and "stop" once the front-ends are done.
The process ignores SIGINT/SIGTERM (a Ctrl-C reaches the whole process group): only the parent
decides when the model stops, after the front-ends have answered what they admitted.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import struct
import threading
import time
from functools import partial

import numpy as np

from attrx.service.contract.drift_stats import PROFILE_KEY
from attrx.service.engine.batcher import Batcher, BatchResult, DeadlineExceeded, Draining, QueueFull
from attrx.service.engine.drift_feed import EngineDrift, batch_profiles
from attrx.service.engine.faults import injected
from attrx.service.engine.leads import Leads
from attrx.service.engine.progress import Progress
from attrx.service.engine.shm import Arena, Layout
from attrx.service.inference.predictor import Predictor, load_predictor, warmup_product
from attrx.service.procutil import die_with_parent, set_process_name

log = logging.getLogger("attrx.engine")

# front-end -> engine: slot, deadline (time.monotonic, the same clock in every process), counted
# (0 for a front-end's warm-up product, which stays out of the prediction metrics), the product's
# key (0: none; equal keys in one batch, from any front-end, run once), and what is asked:
#   RUN     run the product in the slot
#   FOLLOW  answer the slot with the output of the product another front-end leads (or MISS)
#   LEAD    this front-end is working on the product (no slot, no answer)
#   DROP    ... and has stopped before running it (no slot, no answer)
#   BASELINE  the drift reference becomes the window (counted 0) or the bundle's (1); the engine is
#           its one writer. Answered on the slot: OK with the reference's size, or EMPTY, NOT_WRITTEN, OFF
REQUEST = struct.Struct("<IdIQI")
RUN, FOLLOW, LEAD, DROP, BASELINE = range(5)
NO_SLOT = 0xFFFFFFFF
# engine -> front-end: slot, status, batch size (BASELINE: the reference's products), queue wait s, inference s
REPLY = struct.Struct("<IIIff")
OK, EXPIRED, CANCELLED, QUEUE_FULL, DRAINING, FAILED, MISS, EMPTY, NOT_WRITTEN, OFF = range(10)


def status_of(exc: BaseException | None) -> int:
    if exc is None:
        return OK
    codes: dict[type[BaseException], int] = {DeadlineExceeded: EXPIRED, Draining: DRAINING, QueueFull: QUEUE_FULL}
    return codes.get(type(exc), FAILED)


class _Link:
    """One front-end as the engine sees it: its socket and its arena. `dead` once the front-end has
    gone: its queued items are skipped and its answers dropped (a restarted front-end gets a new
    link, socket and arena). Answers are written by the link's own thread, so a front-end that
    stops reading blocks only its own answers, never a batch or the other front-ends."""

    def __init__(self, index: int, sock: socket.socket, arena: Arena):
        self.index, self.sock, self.arena = index, sock, arena
        self.dead = False
        self._out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        threading.Thread(target=self._write, name=f"attrx-engine-write-{index}", daemon=True).start()

    def cancelled(self, slot: int) -> bool:
        return self.dead or self.arena.cancelled(slot)

    def send(self, data: bytes) -> None:
        """Queue an answer (never blocks)."""
        self._out.put(data)

    def close(self) -> None:
        self._out.put(None)

    def _write(self) -> None:
        while (data := self._out.get()) is not None:
            parts = [data]
            while True:  # what queued meanwhile goes in the same write
                try:
                    more = self._out.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._out.put(None)
                    break
                parts.append(more)
            try:
                self.sock.sendall(b"".join(parts))
            except OSError:  # the front-end is gone: nobody to answer
                pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread too
        except OSError:
            pass
        self.sock.close()


class Engine:
    def __init__(self, settings, predictor: Predictor, metrics, drift=None, progress: Progress | None = None,
                 tracer=None):
        self.settings, self.predictor, self.metrics, self.drift = settings, predictor, metrics, drift
        self.tracer = tracer  # OpenTelemetry (attrx serve --tracing): each product's spans after its batch
        self.links: dict[int, _Link] = {}
        self.leads = Leads()
        self.progress = progress
        self.slowest = 0.0  # the slowest recent batch, seconds (decayed): the stall bound allows for it
        m = metrics
        self.batcher = Batcher(
            injected(predictor.run_batch), max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms, max_queue_size=settings.max_queue_size,
            workers=settings.inference_threads, policy=settings.batching,
            on_batch=self._batch_ran,
            on_dequeue=m.queue_seconds.observe,
            on_complete=self._complete,
            on_failure=lambda e: m.batch_failures.labels(type(e).__name__).inc(),
            progress=progress,
        )
        if progress is not None:
            progress.set_bound(settings.stall_timeout_s + settings.max_queue_delay_ms / 1000)

    def _batch_ran(self, n: int, dt: float) -> None:
        m = self.metrics
        m.batch_size.observe(n)
        m.inference_seconds.observe(dt)
        m.queue_depth.set(self.batcher.depth)
        self.slowest = max(dt, self.slowest * 0.95)
        if self.progress is not None:
            s = self.settings
            self.progress.set_bound(max(s.stall_timeout_s, 4 * self.slowest) + s.max_queue_delay_ms / 1000)

    # -- items in -----------------------------------------------------------------------------
    def _read(self, link: _Link) -> None:
        pending = b""
        while True:
            try:
                data = link.sock.recv(65536)
            except OSError:
                data = b""
            if not data:  # the front-end closed its end, or died
                link.dead = True
                link.close()
                self._miss(self.leads.end_link(link))
                return
            pending += data
            whole = len(pending) - len(pending) % REQUEST.size
            for slot, deadline, counted, key, kind in REQUEST.iter_unpack(pending[:whole]):
                self._request(link, kind, slot, deadline, counted, key)
            pending = pending[whole:]

    def _request(self, link: _Link, kind: int, slot: int, deadline: float, counted: int, key: int) -> None:
        if kind == RUN:
            self._submit(link, slot, deadline, counted, key)
        elif kind == FOLLOW:
            if not self.leads.follow(key, link, slot):
                link.send(REPLY.pack(slot, MISS, 0, 0.0, 0.0))
        elif kind == LEAD:
            self.leads.lead(key, link)
        elif kind == DROP:
            self._miss(self.leads.end(key, link))
        elif kind == BASELINE:
            link.send(REPLY.pack(slot, *self._baseline(counted), 0.0, 0.0))

    def _baseline(self, source: int) -> tuple[int, int]:
        """(status, products in the new reference): run where the request is read, under the drift
        feed's lock, so whichever front-end asks, one process writes the reference."""
        if self.drift is None:
            return OFF, 0
        try:
            return OK, self.drift.rebaseline("bundle" if source else "traffic", self.settings.drift_reference)
        except ValueError:
            return EMPTY, 0
        except OSError as e:
            log.error("attrx engine: cannot write the drift reference %s: %s", self.settings.drift_reference, e)
            return NOT_WRITTEN, 0

    @staticmethod
    def _miss(followers) -> None:
        for link, slot in followers:
            link.send(REPLY.pack(slot, MISS, 0, 0.0, 0.0))

    def _submit(self, link: _Link, slot: int, deadline: float, counted: int = 1, key: int = 0) -> None:
        try:
            fut = self.batcher.submit(link.arena.inputs(slot), deadline - time.monotonic(),
                                      cancelled=partial(link.cancelled, slot), tag=(link, slot, counted),
                                      key=key or None)
        except (QueueFull, Draining) as e:
            link.send(REPLY.pack(slot, status_of(e), 0, 0.0, 0.0))
            if key:
                self._miss(self.leads.end(key, link))
            return
        fut.add_done_callback(partial(self._settled, link, slot, key))

    def _settled(self, link: _Link, slot: int, key: int, fut) -> None:
        """An item that ended without running (expired, skipped, refused at stop) or in a failed batch."""
        if fut.cancelled():
            status = CANCELLED
        else:
            exc = fut.exception()
            status = status_of(exc)
            if status == FAILED:
                log.error("attrx engine: [%s] the batch of this product failed: %r", link.arena.read_tag(slot), exc)
        link.send(REPLY.pack(slot, status, 0, 0.0, 0.0))
        if key:
            self._miss(self.leads.end(key, link))  # its followers do the work themselves

    # -- results out --------------------------------------------------------------------------
    def _complete(self, jobs, outputs: list[np.ndarray], t0: float, dt: float) -> None:
        # the slots' tags are read before the answers go: a slot answered is reused at once
        tags = [job.tag[0].arena.read_tag(job.tag[1]) if job.tag is not None else "" for job in jobs] \
            if self.tracer is not None else None
        replies: dict[_Link, list[bytes]] = {}
        n = len(jobs)
        counted = [row for row, job in enumerate(jobs) if job.tag is not None and job.tag[2]]
        if counted:  # warm-up products are not predictions
            outs = outputs if len(counted) == n else [o[counted] for o in outputs]
            self.metrics.observe_batch(outs)
            if self.drift is not None:
                self.drift.observe(outs, batch_profiles(jobs, counted))
        for row, job in enumerate(jobs):
            if job.tag is None:  # the engine's own warm-up
                job.future.set_result(BatchResult(outputs, row, n, t0 - job.enqueued, dt))
                continue
            link, slot, _ = job.tag
            followers = self.leads.end(job.key, link) if job.key else []  # other front-ends' requests for it
            for to, to_slot in [(link, slot), *followers]:
                if to.dead:
                    continue  # its front-end has gone: nobody reads the answer
                to.arena.write_outputs(to_slot, outputs, row)
                if to_slot != slot or to is not link:  # a follower gets the situations its lead decoded
                    to.arena.write_profile(to_slot, job.inputs[PROFILE_KEY])
                replies.setdefault(to, []).append(REPLY.pack(to_slot, OK, n, t0 - job.enqueued, dt))
        for link, parts in replies.items():
            link.send(b"".join(parts))
        if tags is not None:
            self._trace(jobs, tags, t0, dt)

    def _trace(self, jobs, tags: list[str], t0: float, dt: float) -> None:
        from attrx.service.telemetry.tracing import engine_spans, split_tag

        run = self.batcher.last_run()
        for job, tag in zip(jobs, tags, strict=True):
            if tag:
                rid, tp = split_tag(tag)
                engine_spans(self.tracer, tp, rid, job.enqueued, t0, t0 + dt, run, len(jobs))

    # -- life cycle ---------------------------------------------------------------------------
    def attach(self, index: int, sock: socket.socket, arena: Arena) -> None:
        """Front-end `index` (first start or restart): read its requests from now on. A previous
        link with that index (a front-end that died) keeps its arena mapped until its last item is
        done with it; the parent has already unlinked its name."""
        old = self.links.get(index)
        if old is not None:
            old.dead = True
            old.close()
        link = self.links[index] = _Link(index, sock, arena)
        threading.Thread(target=self._read, args=(link,), name=f"attrx-engine-read-{index}", daemon=True).start()

    def warm_up(self, item: dict[str, np.ndarray]) -> None:
        """Full batches, then single items: the batcher's cost model starts with both sizes measured."""
        s = self.settings
        n = min(s.max_batch_size, s.max_queue_size)
        for size in [n] * s.warmup_batches + [1, 1, 1]:
            futs = [self.batcher.submit(item, 60.0) for _ in range(size)]
            for f in futs:
                f.result()


def _layout(predictor: Predictor, item: dict[str, np.ndarray]) -> Layout:
    return Layout.of(item, predictor.run_batch([item, item]))


def engine_main(settings_data: dict, ctl, ready, progress_values=None) -> None:
    """The inference process's entry point (spawned by `attrx.service.serving.supervisor`)."""
    import gc

    from attrx.service.settings import ServeSettings
    from attrx.service.telemetry.prometheus import Metrics

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    set_process_name("attrx-engine")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    settings = ServeSettings(**settings_data)
    try:
        predictor = load_predictor(settings)
        bundle, backend = predictor.bundle, predictor.backend
        assert backend is not None  # loaded with its backend
        metrics = Metrics([a.name for a in bundle.manifest.attributes], front=False)
        metrics.set_model(bundle.manifest, backend.variant, backend.name, backend.providers[0])
        item = predictor.decode_request(*warmup_product()).inputs
        layout = _layout(predictor, item)
        drift = EngineDrift(settings, bundle.manifest, on_estimate=metrics.set_estimates) \
            if settings.drift_window > 0 else None
    except Exception as e:  # noqa: BLE001 - the parent reports it and exits
        ctl.send(("error", f"{type(e).__name__}: {e}"))
        return
    ctl.send(("layout", layout, {"backend": backend.name, "providers": list(backend.providers),
                                 "precision": backend.precision, "variant": backend.variant,
                                 "drift": drift.info if drift is not None else None}))
    progress = Progress(progress_values, settings.workers) if progress_values is not None else None
    if progress is not None:
        progress.reset_engine(time.monotonic(), settings.stall_timeout_s + settings.max_queue_delay_ms / 1000)
    tracer = None
    if settings.tracing:
        from attrx.service.telemetry.tracing import setup

        tracer = setup("engine", settings.tracing_sample_ratio)
    engine = Engine(settings, predictor, metrics, drift, progress, tracer)
    if drift is not None:
        drift.start()
    engine.batcher.start()
    engine.warm_up(item)
    arm = getattr(engine.batcher.run_batch, "arm", None)
    if arm is not None:  # faults injected for a test or benchmark start now (attrx.service.engine.faults)
        log.warning("attrx engine: faults are injected (%s)", os.environ.get("ATTRX_INJECT_FAULTS"))
        arm()
    gc.collect()
    gc.freeze()
    ready.set()
    _serve_control(engine, ctl, layout)
    if drift is not None:
        drift.close()


def _serve_control(engine: Engine, ctl, layout: Layout) -> None:
    """The parent's commands: attach (a front-end's socket, passed over the pipe, and its arena),
    flush (a drain began), stop."""
    from multiprocessing.reduction import recv_handle

    while True:
        try:
            cmd = ctl.recv()
            if cmd[0] == "attach":
                sock = socket.socket(fileno=recv_handle(ctl))
        except (EOFError, OSError):  # the parent is gone
            cmd = ("stop", 0.0)
        if cmd[0] == "attach":
            _, index, name, slots = cmd
            engine.attach(index, sock, Arena(layout, slots, name=name))
        elif cmd[0] == "flush":
            engine.batcher.flush()
        elif cmd[0] == "stop":
            drained = engine.batcher.stop(cmd[1])
            try:
                ctl.send(("stopped", drained))
            except OSError:
                pass
            return
