"""Admission control at the door: a bound on the products in flight, whatever stage they are in.

A product is in flight from the moment its request is admitted until its last piece of work (image
decoding, waiting in the batching queue, running in a batch) has finished, even when its client
has left or its deadline passed, so the bound holds on work, not on answers. Past the bound a
request is refused at once (429): the queue ahead of decoding can never grow without limit.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future


def shared_counter(ctx, processes: int = 1):
    """A count per process in shared memory, for `Admission(shared=(counts, i))` in process i of
    several: the bound then holds for the whole server, whichever front-end process admitted the
    work. Each process writes only its own entry, so no lock is shared between processes: a
    process killed at any instant leaves nothing locked, and the parent zeroes its entry (its work
    died with it) before a replacement starts."""
    return ctx.RawArray("q", processes)


class Admission:
    """A counter of products in flight, bounded by `limit`: thread-safe, and summed over processes
    with `shared=(shared_counter(ctx, n), i)`. Two processes admitting at the same instant can
    each see the other's count before its increment, so the server-wide bound can be passed by at
    most what those processes admit at that instant; one process never passes it."""

    def __init__(self, limit: int, shared: tuple | None = None):
        if limit < 1:
            raise ValueError("the in-flight limit must be >= 1")
        self.limit = limit
        self._counts, self._me = shared if shared is not None else ([0], 0)
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return sum(self._counts)

    @property
    def full(self) -> bool:
        return self.in_flight >= self.limit

    def try_acquire(self, n: int = 1) -> Ticket | None:
        """n slots at once, or None (nothing taken) when they do not all fit."""
        with self._lock:
            if sum(self._counts) + n > self.limit:
                return None
            self._counts[self._me] += n
        return Ticket(self, n)

    def _release(self, n: int) -> None:
        with self._lock:
            self._counts[self._me] -= n


class Ticket:
    """n admitted slots. `close()` gives them back, but only once every piece of work attached
    with `hold()` has finished (a decode or a batch cannot be stopped once it runs)."""

    def __init__(self, admission: Admission, n: int):
        self._admission, self._n = admission, n
        self._pending = 0
        self._closed = False
        self._lock = threading.Lock()

    def hold(self, fut: Future | asyncio.Future) -> None:
        with self._lock:
            self._pending += 1
        fut.add_done_callback(self._done)

    def _done(self, _fut) -> None:
        with self._lock:
            self._pending -= 1
            release = self._closed and self._pending == 0
        if release:
            self._admission._release(self._n)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            release = self._pending == 0
        if release:
            self._admission._release(self._n)
