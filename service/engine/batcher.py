"""Dynamic batching with Triton's semantics.

- A batch closes when it holds `max_batch_size` items or when its oldest item has waited
  `max_queue_delay_ms`.
- The queue is bounded: `submit` on a full queue raises QueueFull at once (the caller answers 429).
- Every item has a deadline: one that expires while queued is failed with DeadlineExceeded and
  never run. A cancelled item (client gone) is skipped.
- `run_batch` gets the items' inputs as a list (batching them is its job: `Pipeline.run_batch`).
- An item can carry a `cancelled()` check (its client, in another process, has gone) and a `tag`;
  with `on_complete` the caller answers a finished batch's items itself instead of their futures.
- Inference runs in dedicated worker threads, so an asyncio event loop stays responsive; callers
  get a `concurrent.futures.Future` (awaitable with `asyncio.wrap_future`).
- `stop(drain_timeout)` stops accepting, finishes what is queued and in flight, then ends the threads.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np


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


@dataclass
class BatchResult:
    """What one item gets back: the whole batch's outputs and its row in them."""

    outputs: list[np.ndarray]
    row: int
    batch_size: int
    queue_seconds: float
    inference_seconds: float


class Batcher:
    def __init__(
        self,
        run_batch: Callable[[list[dict[str, np.ndarray]]], list[np.ndarray]],
        *,
        max_batch_size: int = 32,
        max_queue_delay_ms: float = 5.0,
        max_queue_size: int = 256,
        workers: int = 1,
        on_batch: Callable[[int, float], None] | None = None,
        on_dequeue: Callable[[float], None] | None = None,
        on_expired: Callable[[], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        on_complete: Callable[[list[_Job], list[np.ndarray], float, float], None] | None = None,
    ):
        if max_batch_size < 1 or max_queue_size < 1 or workers < 1:
            raise ValueError("max_batch_size, max_queue_size and workers must be >= 1")
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
        self._threads = [threading.Thread(target=self._loop, name=f"attrx-infer-{i}", daemon=True)
                         for i in range(workers)]
        self._on_batch, self._on_dequeue = on_batch, on_dequeue
        self._on_expired, self._on_depth = on_expired, on_depth
        self._on_complete = on_complete

    # -- public -----------------------------------------------------------------------------
    def start(self) -> None:
        self._accepting = True
        for t in self._threads:
            t.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, inputs: dict[str, np.ndarray], timeout_s: float, *,
               cancelled: Callable[[], bool] | None = None, tag: object = None) -> Future:
        job = _Job(inputs, time.monotonic() + timeout_s, cancelled=cancelled, tag=tag)
        with self._cond:
            if not self._accepting:
                raise Draining("the server is shutting down")
            if len(self._queue) >= self.max_queue_size:
                raise QueueFull(f"the queue is full ({self.max_queue_size} waiting)")
            self._queue.append(job)
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

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            # close the batch at max_batch_size or when the oldest item has waited max_queue_delay
            while (len(self._queue) < self.max_batch_size and not self._stopping and self._accepting
                   and not self._flushing):
                remaining = self._queue[0].enqueued + self.max_delay - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                if not self._queue:
                    return []
            now = time.monotonic()
            jobs = []
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
            try:
                outputs = self.run_batch([j.inputs for j in jobs])
            except BaseException as e:  # noqa: BLE001 - every waiting caller must hear about it
                for j in jobs:
                    j.future.set_exception(e)
            else:
                self._complete(jobs, outputs, t0, time.monotonic() - t0)
            finally:
                with self._cond:
                    self._in_flight -= len(jobs)
                    self._cond.notify_all()
