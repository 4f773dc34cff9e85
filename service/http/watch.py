"""Waiting for one request's work without polling: until it is done, its deadline passes, its
client hangs up, or the server's drain deadline comes.

Work that has not started is cancelled at that point and answered (504 timeout, 503 draining) or
dropped (client gone). Work already running cannot be stopped: it gets `RUNNING_GRACE_S` more to
finish (a batch that was nearly done still answers), and past that the request is answered 504
(or 503 while draining) whatever the engine is doing, so no request outlives its deadline by more
than the grace. The work is left to finish unobserved; its admission slot is held until it ends.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import Future

from attrx.service.http.errors import ApiError, ClientGone, retry_later

RUNNING_GRACE_S = 0.5  # how long past its deadline a request waits on work that already runs


class Drain:
    """The server's shutdown clock: `deadline` is +inf until a drain begins."""

    def __init__(self):
        self.deadline = math.inf
        self.refused = 0  # requests answered 503 because of the drain

    @property
    def draining(self) -> bool:
        return self.deadline != math.inf

    def begin(self, timeout_s: float) -> None:
        if not self.draining:
            self.deadline = time.monotonic() + timeout_s


async def _disconnected(receive) -> None:
    # after the body is read, the server's receive() blocks until the client hangs up
    while (await receive())["type"] != "http.disconnect":
        pass


class Watch:
    def __init__(self, receive, deadline: float, drain: Drain, timeout_ms: float):
        self._receive, self.deadline, self.drain, self.timeout_ms = receive, deadline, drain, timeout_ms
        self._gone: asyncio.Task | None = None

    def _gone_task(self) -> asyncio.Task:
        if self._gone is None:
            self._gone = asyncio.ensure_future(_disconnected(self._receive))
        return self._gone

    def close(self) -> None:
        if self._gone is not None:
            self._gone.cancel()

    def check(self, stage: str) -> None:
        """Before starting a stage: refuse when the deadline or the drain has already come."""
        now = time.monotonic()
        if now >= self.drain.deadline:
            raise retry_later(503, "draining", "the server is shutting down")
        if now >= self.deadline:
            raise ApiError(504, "timeout", f"the deadline of {self.timeout_ms:.0f} ms passed before {stage}")

    def expired(self, stage: str) -> ApiError:
        """The answer for a request whose deadline (or the drain's) has come."""
        try:
            self.check(stage)
        except ApiError as e:
            return e
        return ApiError(504, "timeout", f"the deadline of {self.timeout_ms:.0f} ms passed before {stage}")

    async def wait(self, fut: Future | asyncio.Future, stage: str, cancel=None):
        """The result of `fut`, or an ApiError / ClientGone. `cancel()` (default `fut.cancel`) says
        this request leaves the work, and whether the work was stopped before it started (work in
        another process may not know yet, and says False: it runs on, unobserved)."""
        cancel = cancel or fut.cancel
        afut = asyncio.wrap_future(fut)
        gone = self._gone_task()
        left = min(self.deadline, self.drain.deadline) - time.monotonic()
        if left > 0:
            await asyncio.wait({afut, gone}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if afut.done():
            return afut.result()
        if gone.done():
            cancel()
            raise ClientGone
        if cancel():  # not started: it never will be
            raise self.expired(stage)
        # running: a short grace, then answered whatever the engine is doing
        await asyncio.wait({afut, gone}, timeout=RUNNING_GRACE_S, return_when=asyncio.FIRST_COMPLETED)
        if afut.done() and not afut.cancelled():
            result = afut.result()  # (an error, such as an undecodable image, is raised as it is)
            if result is not None:  # None: the work saw that every waiter had left
                return result
        elif gone.done():
            raise ClientGone
        raise self.expired(stage)
