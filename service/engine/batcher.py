"""Dynamic batching that never makes a request wait for company that is not coming.

- `policy="adaptive"` (the default): a free worker takes what is queued at once (a lone request
  runs alone; while a batch runs, arrivals queue and form the next one). It waits for more only
  where that is expected to raise throughput: when the items expected to arrive within one batch's
  fixed cost outnumber those queued (`fixed_cost * arrival_rate > queued`, the point where a bigger
  batch's saved overhead beats the engine's idle wait), and never past `max_queue_delay_ms`. The
  fixed cost is fitted online from measured batch times (`time = fixed + per_item * size`), the
  arrival rate from submissions. On a CPU with a small fixed cost this is continuous batching;
  where a batch's overhead is large (a GPU) it waits for fuller batches under load.
- `policy="fixed"` (Triton's semantics): a batch closes when it holds `max_batch_size` items or
  when its oldest item has waited `max_queue_delay_ms`.
- Items submitted with the same `key` (the same product) and run in one batch are computed once:
  `run_batch` sees each distinct key once and every item gets its row.
- The queue is bounded: `submit` on a full queue raises QueueFull at once (the caller answers 429).
- Every item has a deadline: one that expires while queued is failed with DeadlineExceeded and
  never run. A cancelled item (client gone) is skipped.
- `run_batch` gets the items' inputs as a list (batching them is its job: `Predictor.run_batch`).
- An item can carry a `cancelled()` check (its client, in another process, has gone) and a `tag`;
  with `on_complete` the caller answers a finished batch's items itself instead of their futures.
- Inference runs in dedicated worker threads, so an asyncio event loop stays responsive; callers
  get a `concurrent.futures.Future` (awaitable with `asyncio.wrap_future`).
- `stop(drain_timeout)` stops accepting, finishes what is queued and in flight, then ends the threads.
- With `progress` (`attrx.service.engine.progress.Progress`) the workers publish their heartbeat,
  each batch's start and end, and the age of the oldest queued item, so other processes can tell
  a stalled engine from a busy one.
- A worker never dies of an exception: a batch whose model run or completion fails answers its
  items with the error (`on_failure` counts it) and the next batch runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from attrx.service.engine.progress import TICK_S

log = logging.getLogger("attrx.engine")

class QueueFull(RuntimeError):
    pass


class DeadlineExceeded(TimeoutError):
    pass


class Draining(RuntimeError):
    pass


@dataclass
class _Job:
    inputs: dict[str, np.ndarray]
    deadline: float
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    cancelled: Callable[[], bool] | None = None  # cancelled elsewhere (another process's client gone)
    tag: object = None  # the caller's, for on_complete
    key: object = None  # equal keys in one batch run once (the same product)


class CostModel:
    """A batch's time as `fixed + per_item * size`, least squares over recent batches (decayed)."""

    def __init__(self, decay: float = 0.98):
        self.decay = decay
        self._s = np.zeros(5)  # weight, sum n, sum n^2, sum t, sum n*t

    def observe(self, n: int, seconds: float) -> None:
        self._s = self._s * self.decay + np.array([1.0, n, n * n, seconds, n * seconds])

    @property
    def fixed_cost(self) -> float:
        """Seconds a batch costs whatever its size; 0 until batches of different sizes were seen."""
        w, sn, snn, st, snt = self._s
        var = w * snn - sn * sn
        if w < 2 or var <= 1e-9 * max(1.0, w * snn):
            return 0.0
        slope = (w * snt - sn * st) / var
        return max(0.0, (st - slope * sn) / w)


class ArrivalRate:
    """Items per second, from the gaps between submissions (an exponentially weighted mean gap;
    a silence longer than it counts as the current gap, so an idle server's rate falls at once)."""

    def __init__(self, alpha: float = 0.1):
        self.alpha = alpha
        self._gap: float | None = None
        self._last: float | None = None

    def tick(self, now: float) -> None:
        if self._last is not None:
            gap = now - self._last
            self._gap = gap if self._gap is None else self._gap + self.alpha * (gap - self._gap)
        self._last = now

    def per_second(self, now: float) -> float:
        if self._gap is None or self._last is None:
            return 0.0
        return 1.0 / max(self._gap, now - self._last, 1e-6)


@dataclass
class BatchResult:
    """What one item gets back: the whole batch's outputs and its row in them."""

    outputs: list[np.ndarray]
    row: int
    batch_size: int
    queue_seconds: float
    inference_seconds: float
    profile: np.ndarray | None = None  # through another process: the product's decoded profile (its situations)


class Batcher:
    def __init__(
        self,
        run_batch: Callable[[list[dict[str, np.ndarray]]], list[np.ndarray]],
        *,
        max_batch_size: int = 32,
        max_queue_delay_ms: float = 5.0,
        max_queue_size: int = 256,
        workers: int = 1,
        policy: str = "adaptive",
        on_batch: Callable[[int, float], object] | None = None,
        on_dequeue: Callable[[float], None] | None = None,
        on_expired: Callable[[], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        on_complete: Callable[[list[_Job], list[np.ndarray], float, float], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        progress=None,
    ):
        if max_batch_size < 1 or max_queue_size < 1 or workers < 1:
            raise ValueError("max_batch_size, max_queue_size and workers must be >= 1")
        if policy not in ("adaptive", "fixed"):
            raise ValueError(f"policy must be adaptive or fixed, not {policy!r}")
        self.policy = policy
        self.costs, self.arrivals = CostModel(), ArrivalRate()
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._accepting = False
        self._flushing = False
        self._stopping = False
        self._in_flight = 0
        self._thread = threading.local()  # per inference thread: its last model run's (start, end)
        self._threads = [threading.Thread(target=self._loop, name=f"attrx-infer-{i}", daemon=True)
                         for i in range(workers)]
        self._on_batch, self._on_dequeue = on_batch, on_dequeue
        self._on_expired, self._on_depth = on_expired, on_depth
        self._on_complete, self._on_failure = on_complete, on_failure
        self.progress = progress

    # -- public -----------------------------------------------------------------------------
    def start(self) -> None:
        self._accepting = True
        for t in self._threads:
            t.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, inputs: dict[str, np.ndarray], timeout_s: float, *,
               cancelled: Callable[[], bool] | None = None, tag: object = None, key: object = None) -> Future:
        job = _Job(inputs, time.monotonic() + timeout_s, cancelled=cancelled, tag=tag, key=key)
        with self._cond:
            if not self._accepting:
                raise Draining("the server is shutting down")
            if len(self._queue) >= self.max_queue_size:
                raise QueueFull(f"the queue is full ({self.max_queue_size} waiting)")
            self._queue.append(job)
            if len(self._queue) == 1 and self.progress is not None:
                self.progress.queued_since(job.enqueued)
            self.arrivals.tick(job.enqueued)
            self._depth_changed()
            self._cond.notify()
        return job.future

    def flush(self) -> None:
        """Draining: from now on run what is queued at once, without waiting for a batch to fill.
        Items still arrive (work admitted before the drain began is finishing its decoding);
        `stop` refuses new ones."""
        with self._cond:
            self._flushing = True
            self._cond.notify_all()

    def stop(self, drain_timeout: float = 10.0) -> bool:
        """Stop accepting; wait up to drain_timeout for queued and running work. True if drained."""
        end = time.monotonic() + drain_timeout
        with self._cond:
            self._accepting = False
            self._cond.notify_all()
            while (self._queue or self._in_flight) and time.monotonic() < end:
                self._cond.wait(min(0.05, max(0.0, end - time.monotonic())))
            drained = not self._queue and not self._in_flight
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in left:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(Draining("the server shut down before this request was run"))
        for t in self._threads:
            t.join(timeout=max(0.1, end - time.monotonic()))
        return drained

    # -- worker -----------------------------------------------------------------------------
    def _depth_changed(self) -> None:
        if self._on_depth:
            self._on_depth(len(self._queue))

    def _wait_s(self) -> float:
        """How long to wait for more items before closing the batch now; 0: close it."""
        n = len(self._queue)
        if n >= self.max_batch_size or self._stopping or not self._accepting or self._flushing:
            return 0.0
        now = time.monotonic()
        left = self._queue[0].enqueued + self.max_delay - now
        if self.policy == "fixed" or left <= 0:
            return max(0.0, left)
        rate = self.arrivals.per_second(now)
        expected = min(self.max_batch_size, self.costs.fixed_cost * rate)  # arrivals within one overhead
        if expected <= n:
            return 0.0  # waiting would idle the engine for less than it saves
        return min(left, (expected - n) / rate)

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait(TICK_S)
                if self.progress is not None:
                    self.progress.beat(time.monotonic())
            while (wait := self._wait_s()) > 0:
                self._cond.wait(min(wait, TICK_S))
                if self.progress is not None:  # waiting for company by design is progress
                    self.progress.beat(time.monotonic())
                if not self._queue:
                    return []
            now = time.monotonic()
            jobs: list[_Job] = []
            while self._queue and len(jobs) < self.max_batch_size:
                job = self._queue.popleft()
                if now > job.deadline:
                    if job.future.set_running_or_notify_cancel():
                        job.future.set_exception(DeadlineExceeded("the request's deadline passed while it was queued"))
                        if self._on_expired:
                            self._on_expired()
                    continue
                if job.cancelled is not None and job.cancelled():
                    job.future.cancel()
                if job.future.set_running_or_notify_cancel():  # False: cancelled (client gone)
                    jobs.append(job)
            self._in_flight += len(jobs)
            self._depth_changed()
            if self.progress is not None:
                self.progress.queued_since(self._queue[0].enqueued if self._queue else 0.0)
            return jobs

    def _complete(self, jobs: list[_Job], outputs: list[np.ndarray], t0: float, dt: float) -> None:
        if self._on_batch:
            self._on_batch(len(jobs), dt)
        if self._on_dequeue:
            for j in jobs:
                self._on_dequeue(t0 - j.enqueued)
        if self._on_complete:  # the caller answers the items itself (attrx.service.engine.process: other processes)
            return self._on_complete(jobs, outputs, t0, dt)
        for i, j in enumerate(jobs):
            j.future.set_result(BatchResult(outputs, i, len(jobs), t0 - j.enqueued, dt))

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            if not jobs:
                continue
            t0 = time.monotonic()
            if self.progress is not None:
                self.progress.batch_started(t0)
            try:
                outputs = self._run_unique(jobs)
                self._complete(jobs, outputs, t0, time.monotonic() - t0)
            except BaseException as e:  # noqa: BLE001 - every waiting caller must hear about it; the thread lives on
                self._failed(jobs, e)
            finally:
                if self.progress is not None:
                    self.progress.batch_done(time.monotonic())
                with self._cond:
                    self._in_flight -= len(jobs)
                    self._cond.notify_all()

    def _failed(self, jobs: list[_Job], e: BaseException) -> None:
        log.error("attrx engine: a batch of %d failed: %r", len(jobs), e)
        if self._on_failure is not None:
            try:
                self._on_failure(e)
            except Exception:  # noqa: BLE001 - a metric must not end the thread
                log.exception("attrx engine: counting a failed batch failed")
        for j in jobs:
            if not j.future.done():
                j.future.set_exception(e)

    def last_run(self) -> tuple[float, float] | None:
        """(start, end) of the model run this inference thread did last (time.monotonic), for on_complete."""
        return getattr(self._thread, "run", None)

    def _run_unique(self, jobs: list[_Job]) -> list[np.ndarray]:
        """run_batch on the batch's distinct products; every job gets its product's row."""
        first: dict[object, int] = {}
        unique: list[dict[str, np.ndarray]] = []
        where: list[int] = []
        for i, j in enumerate(jobs):
            k = ("unkeyed", i) if j.key is None else j.key
            if k not in first:
                first[k] = len(unique)
                unique.append(j.inputs)
            where.append(first[k])
        t0 = time.monotonic()
        outputs = self.run_batch(unique)
        t1 = time.monotonic()
        self.costs.observe(len(unique), t1 - t0)
        self._thread.run = (t0, t1)  # this worker's last model run (tracing reads it in on_complete)
        if len(unique) == len(jobs):
            return outputs
        take = np.asarray(where)
        return [o[take] for o in outputs]
