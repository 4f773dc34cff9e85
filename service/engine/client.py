"""A front-end's handle on the inference process (`attrx.service.engine.process`), used from its event loop.

`submit` writes a decoded product into a free slot of this front-end's arena and sends the slot's
number; the engine's "done" messages are read by a reader callback on the event loop itself, so an
answer reaches its request without a thread hand-off. A slot is reused only after the engine has
answered it, whatever happened to the request meanwhile.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from attrx.service.engine.batcher import BatchResult, DeadlineExceeded, Draining, QueueFull
from attrx.service.engine.process import (
    BASELINE,
    CANCELLED,
    DRAINING,
    DROP,
    EMPTY,
    EXPIRED,
    FOLLOW,
    LEAD,
    MISS,
    NO_SLOT,
    NOT_WRITTEN,
    OFF,
    OK,
    QUEUE_FULL,
    REPLY,
    REQUEST,
    RUN,
)
from attrx.service.engine.shm import Arena, Layout


@dataclass
class EngineLink:
    """What the supervisor hands a front-end process: its end of the engine's socket, its arena's
    name and size, the shared admission counter, the engine's readiness and what it runs on."""

    sock: socket.socket
    listen: socket.socket  # this front-end's listening socket (SO_REUSEPORT: one per front-end, one port)
    arena: str
    slots: int
    layout: Layout
    admission: Any  # shared_counter(): products in flight, an entry per front-end
    connections: Any  # shared_counter(): open connections, an entry per front-end
    warm: Any  # shared_counter(): 1 per front-end ready; /readyz says 200 once all `workers` are
    workers: int
    index: int  # this front-end's number, 0..workers-1
    ready: Any  # a multiprocessing Event, set once the engine has run its warm-up batches
    info: dict  # backend, providers
    restarted: bool = False  # a replacement for a front-end that died: it serves only once warm
    keys: Any = None  # shared table of the products being worked on (attrx.service.http.dedup.SharedKeys)
    progress: Any = None  # attrx.service.engine.progress.Progress: the engine's and the front-ends' progress
    control: Any = None  # this end of the supervisor's pipe: a new engine's socket arrives on it


class EngineGone(RuntimeError):
    """The inference process stopped answering."""


class Miss(LookupError):
    """The product followed is not (or no longer) being worked on elsewhere: do it here."""


class BatchFailed(RuntimeError):
    """The model raised on the batch that held this product (the engine logged it and runs on)."""


class EmptyWindow(ValueError):
    """A re-baseline from traffic with nothing served yet."""


class DriftOff(LookupError):
    """Drift telemetry is off in the inference process."""


def _failure(status: int) -> BaseException:
    if status == EMPTY:
        return EmptyWindow("the window is empty: nothing has been served since the server started")
    if status == NOT_WRITTEN:
        return OSError("the inference process could not write the drift reference file (see the server's log)")
    if status == OFF:
        return DriftOff("drift telemetry is off")
    if status == EXPIRED:
        return DeadlineExceeded("the request's deadline passed while it was queued")
    if status == DRAINING:
        return Draining("the server is shutting down")
    if status == QUEUE_FULL:
        return QueueFull("the inference queue is full")
    if status == MISS:
        return Miss("nobody leads this product")
    return BatchFailed("the model failed on the batch that held this product (see the server's log); "
                       "other batches are served")


class EngineClient:
    def __init__(self, sock: socket.socket, arena: Arena):
        self.sock, self.arena = sock, arena
        self._free = list(range(arena.n - 1, -1, -1))
        self._pending: dict[int, asyncio.Future] = {}
        self._sent: dict[int, float] = {}  # when each unanswered slot was sent (time.monotonic)
        self._buf = b""
        self._out = bytearray()  # requests not yet written: one write per event-loop turn
        self._flushing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.gone = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def _take_slot(self) -> int:
        """A free slot of this front-end's arena. Raises EngineGone, or QueueFull when every slot is taken."""
        if self.gone:
            raise EngineGone("the inference process has stopped")
        if not self._free:
            raise QueueFull(f"all {self.arena.n} slots of this front-end are taken")
        return self._free.pop()

    def submit(self, inputs: dict[str, np.ndarray], deadline: float, *, counted: bool = True, key: int = 0,
               tag: str = "") -> tuple[asyncio.Future, int]:
        """(future of a BatchResult, slot). Raises QueueFull when every slot is taken, EngineGone.
        counted=False: a warm-up product, kept out of the prediction metrics. key: the product's
        (`attrx.service.http.dedup.engine_key`; 0: none). tag: its request id, for the engine's log."""
        k = self._take_slot()
        try:
            self.arena.write_inputs(k, inputs)
            self.arena.write_tag(k, tag)
        except BaseException:
            self._free.append(k)
            raise
        return self._send(RUN, k, deadline, int(counted), key), k

    def follow(self, key: int, deadline: float, tag: str = "") -> tuple[asyncio.Future, int]:
        """(future of a BatchResult, slot): the output of the product with this key that another
        front-end leads. The future raises Miss when nobody leads it (then do the work here)."""
        k = self._take_slot()
        self.arena.flags[k] = 0  # no inputs to write: only the cancel flag to clear
        self.arena.write_tag(k, tag)
        return self._send(FOLLOW, k, deadline, 1, key), k

    def baseline(self, source: str) -> tuple[asyncio.Future, int]:
        """(future of a BatchResult whose batch size is the new reference's products, slot): ask the
        engine, the drift reference's one writer, to re-baseline ('traffic' or 'bundle')."""
        k = self._take_slot()
        return self._send(BASELINE, k, 0.0, int(source == "bundle"), 0), k

    def lead(self, key: int) -> None:
        """This front-end is working on the product: others may follow it."""
        if not self.gone:
            self._write(REQUEST.pack(NO_SLOT, 0.0, 0, key, LEAD))

    def drop(self, key: int) -> None:
        """... and stopped before running it: its followers hear "miss"."""
        if not self.gone:
            self._write(REQUEST.pack(NO_SLOT, 0.0, 0, key, DROP))

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the engine client is not started (start() runs it on the event loop)")
        return self._loop

    def _send(self, kind: int, k: int, deadline: float, counted: int, key: int) -> asyncio.Future:
        self._write(REQUEST.pack(k, deadline, counted, key, kind))
        fut = self.loop.create_future()
        self._pending[k] = fut
        self._sent[k] = time.monotonic()
        return fut

    @property
    def waiting_since(self) -> float:
        """When the oldest slot the engine has not answered yet was sent (0: none is waiting)."""
        return min(self._sent.values(), default=0.0)

    def _write(self, message: bytes) -> None:
        self._out += message
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write what this turn of the event loop submitted in one send: under load the engine's
        reader thread wakes once per turn, not once per product (each wake-up took the core from
        this loop, which also answers the 429s)."""
        while self._out and not self.gone:
            try:
                n = self.sock.send(self._out)
            except BlockingIOError:  # the engine is behind: finish when the socket can take more
                self.loop.add_writer(self.sock.fileno(), self._writable)
                return
            except OSError:
                return self._lost()
            del self._out[:n]
        self._flushing = False

    def _writable(self) -> None:
        self.loop.remove_writer(self.sock.fileno())
        self._flush()

    def cancel(self, k: int) -> bool:
        """Ask the engine to skip slot k. False: it may already be running (the answer still comes)."""
        self.arena.cancel(k)
        return False

    def _readable(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return self._lost()
        buf = self._buf + data
        whole = len(buf) - len(buf) % REPLY.size
        for k, status, n, queue_s, infer_s in REPLY.iter_unpack(buf[:whole]):
            self._answer(k, status, n, queue_s, infer_s)
        self._buf = buf[whole:]

    def _answer(self, k: int, status: int, n: int, queue_s: float, infer_s: float) -> None:
        fut = self._pending.pop(k, None)
        self._sent.pop(k, None)
        outputs = self.arena.read_outputs(k) if status == OK else None
        profile = self.arena.read_profile(k) if status == OK else None
        self._free.append(k)
        if fut is None or fut.done():
            return
        if outputs is not None:  # status OK
            fut.set_result(BatchResult(outputs, 0, n, queue_s, infer_s, profile))
        elif status == CANCELLED:
            fut.cancel()
        else:
            fut.set_exception(_failure(status))
            fut.exception()  # whoever still waits gets it from result(); nobody waiting is no error

    def _lost(self) -> None:
        self.gone = True
        self.loop.remove_reader(self.sock.fileno())
        self._fail_all(EngineGone("the inference process has stopped"))

    def _fail_all(self, exc: BaseException) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()
        self._pending.clear()
        self._sent.clear()

    async def settled(self, timeout: float) -> bool:
        """Wait (up to timeout) until the engine has answered every slot sent; True if it has."""
        end = time.monotonic() + timeout
        while self._pending and time.monotonic() < end and not self.gone:
            await asyncio.wait(list(self._pending.values()), timeout=end - time.monotonic())
        return not self._pending

    def close(self) -> None:
        if self._loop is not None and not self.gone:
            self._loop.remove_reader(self.sock.fileno())
        self._fail_all(Draining("the server shut down before this request was run"))
        self.sock.close()
