"""Remote images fetched ahead of the rows that need them, so decoding never waits on the network.

`prefetched(items, ...)` yields the items in their order, each with its fetched image (or the
`FetchError` it ended in). Up to `concurrency` fetches run at once in threads (the fetcher also
bounds each host), up to `4 x concurrency` rows ahead of the consumer; memory stays bounded by that
window, not by the catalog. Local files and image bytes are not touched here: the decode workers
read those themselves, behind their own guards.

Profile (benchmarks/remote_images.py, py-spy): a fetch is almost all waiting on the socket, and
urllib3 releases the GIL there, so threads cost little CPU beside decoding; asyncio would need a
second HTTP stack for the same effect.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

from attrx.service.catalog.fetch import Fetched, FetchError
from attrx.service.catalog.sources import ImageReader, ImageRef, is_remote

T = TypeVar("T")
DEFAULT_CONCURRENCY = 128


@dataclass
class FetchStats:
    """What the progress bar shows beside rows scored."""
    fetched: int = 0
    cached: int = 0  # fresh in the cache, or revalidated (304)
    failed: int = 0
    bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, got: Fetched | None, error: FetchError | None) -> None:
        with self._lock:
            if error is not None:
                self.failed += 1
            elif got is not None:
                if got.source == "network":
                    self.fetched += 1
                    self.bytes += len(got.data)
                else:
                    self.cached += 1

    def any(self) -> bool:
        return bool(self.fetched or self.cached or self.failed)

    def postfix(self) -> dict[str, str | int]:
        return {"fetched": self.fetched, "cached": self.cached, "failed": self.failed,
                "MB": f"{self.bytes / 1e6:.1f}"}

    def to_json(self) -> dict[str, int]:
        return {"fetched": self.fetched, "cached": self.cached, "failed": self.failed, "bytes": self.bytes}


class _Threads:
    """`n` fetching threads started up front, taking work from one queue. (ThreadPoolExecutor starts
    a thread per submit until it has `n`: under load each start waits for the GIL, and the profile
    showed the consumer spending most of its time there.)"""

    def __init__(self, n: int):
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._run, daemon=True, name=f"attrx-fetch-{i}") for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while (job := self.work.get()) is not None:
            fut, fn, arg = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(arg))
                except BaseException as e:  # handed to the consumer
                    fut.set_exception(e)

    def submit(self, fn, arg) -> Future:
        fut: Future = Future()
        self.work.put((fut, fn, arg))
        return fut

    def close(self, pending: list[Future]) -> None:
        for f in pending:
            f.cancel()
        for _ in self.threads:
            self.work.put(None)


def prefetched(items: Iterable[T], ref_of: Callable[[T], ImageRef | None], reader: ImageReader, *,
               concurrency: int = DEFAULT_CONCURRENCY, stats: FetchStats | None = None,
               ) -> Iterator[tuple[T, Fetched | None, FetchError | None]]:
    """(item, fetched image or None, error or None) for each item, in order; None, None for an item
    whose image is not remote."""
    window: deque[tuple[T, Future | None]] = deque()
    source = iter(items)
    pool: _Threads | None = None
    try:
        while True:
            while len(window) < 4 * concurrency and (item := next(source, _END)) is not _END:
                ref = ref_of(item)
                if is_remote(ref) and pool is None:
                    pool = _Threads(concurrency)
                window.append((item, pool.submit(reader.fetch, ref) if is_remote(ref) else None))
            if not window:
                return
            item, fut = window.popleft()
            if fut is None:
                yield item, None, None
                continue
            try:
                got, err = fut.result(), None
            except FetchError as e:
                got, err = None, e
            if stats is not None:
                stats.add(got, err)
            yield item, got, err
    finally:
        if pool is not None:
            pool.close([f for _, f in window if f is not None])


_END: object = object()
