"""Decoding worker processes that never hang a batch job, and account for every row.

`multiprocessing.Pool` loses the task of a worker that dies (the kernel's OOM killer on a hostile
image, a crash in a decoder) and its result never comes: the job waits for ever. Here each worker
has its own pipe, so the parent knows which chunk of rows each one holds:

- A worker that dies, or holds its chunk past `row_timeout_s` per row (a read that blocks: a hung
  mount), is killed and replaced. The rows it held are retried one by one in new workers; a row
  that takes a worker down twice is answered as an error naming what happened. The job goes on.
- Chunks come back in the order they were given, so output follows the catalog.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait

log = logging.getLogger("attrx.score")

MAX_ATTEMPTS = 2


def _work(conn, init: Callable, initargs: tuple, fn: Callable) -> None:
    init(*initargs)
    conn.send(("ready", None))  # a row's time limit counts from here, not from a slow start
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        unit, tasks = msg
        conn.send((unit, [fn(t) for t in tasks]))


@dataclass
class _Unit:
    seq: int  # the chunk it belongs to
    rows: list[int]  # positions in that chunk
    tasks: list
    attempts: int = 0


@dataclass
class _Worker:
    proc: mp.process.BaseProcess
    conn: object
    unit: _Unit | None = None
    since: float = 0.0
    ready: bool = False  # started (its initializer ran): only then does its unit's clock run


@dataclass
class _Chunk:
    results: list
    left: int
    tasks: list = field(default_factory=list)


def chunked(items: Iterable, size: int) -> Iterator[list]:
    """`items` in lists of `size` (the units `map_chunks` hands to workers), lazily."""
    source = iter(items)
    while chunk := list(itertools.islice(source, size)):
        yield chunk


class DecodePool:
    """`workers` processes running `fn(task)` for each task, after `init(*initargs)`. `failed(task,
    why)` makes the result of a row whose worker died on it twice (or ran out of time)."""

    def __init__(self, workers: int, init: Callable, initargs: tuple, fn: Callable,
                 failed: Callable[[object, str], object], *, row_timeout_s: float = 60.0, ctx=None):
        self.init, self.initargs, self.fn, self.failed = init, initargs, fn, failed
        self.row_timeout_s = row_timeout_s
        self.ctx = ctx or mp.get_context("fork")
        self.replace_ctx = mp.get_context("spawn")  # replacements start clean: the parent has threads by then
        self.workers = [self._start(self.ctx) for _ in range(workers)]
        self.deaths = 0
        self.start_failures = 0  # workers in a row that died before they were ready

    def _start(self, ctx) -> _Worker:
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=_work, args=(theirs, self.init, self.initargs, self.fn), daemon=True)
        p.start()
        theirs.close()
        return _Worker(p, mine)

    # -- the parent's loop ------------------------------------------------------------------
    def map_chunks(self, chunks: Iterable[list], stop, window: int | None = None) -> Iterator[list]:
        """Each chunk's results, in order, until done or `stop` is set; at most `window` chunks
        (default 4 per worker) are read ahead, so memory stays bounded."""
        source = iter(chunks)
        window = window or 4 * len(self.workers)
        todo: deque[_Unit] = deque()
        held: dict[int, _Chunk] = {}
        next_seq = fed = 0
        while not stop.is_set():
            while len(held) < window and (chunk := next(source, None)) is not None:
                held[fed] = _Chunk([None] * len(chunk), len(chunk), chunk)
                todo.append(_Unit(fed, list(range(len(chunk))), chunk))
                fed += 1
            if next_seq in held and held[next_seq].left == 0:
                yield held.pop(next_seq).results
                next_seq += 1
                continue
            if not held:
                return
            self._dispatch(todo)
            self._collect(todo, held)

    def _dispatch(self, todo: deque[_Unit]) -> None:
        for w in self.workers:
            if w.unit is None and todo:
                w.unit, w.since = todo.popleft(), time.monotonic()
                try:
                    w.conn.send((0, w.unit.tasks))  # type: ignore[attr-defined]
                except OSError:
                    pass  # it died: its sentinel says so next

    def _collect(self, todo: deque[_Unit], held: dict[int, _Chunk]) -> None:
        busy = [w for w in self.workers if w.unit is not None]
        ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=0.2)  # type: ignore[misc]
        now = time.monotonic()
        for i, w in enumerate(self.workers):
            if w.unit is None:
                continue
            if w.conn in ready:
                try:
                    tag, results = w.conn.recv()  # type: ignore[attr-defined]
                except (EOFError, OSError):
                    tag, results = None, None
                if tag == "ready":
                    w.ready, w.since, self.start_failures = True, now, 0
                    continue
                if results is not None:
                    self._fill(held, w.unit, results)
                    w.unit = None
                    continue
            late = w.ready and now - w.since > self.row_timeout_s * len(w.unit.tasks)
            if w.proc.sentinel in ready or not w.proc.is_alive() or late:
                self._lost(i, todo, held, late)

    @staticmethod
    def _fill(held: dict[int, _Chunk], unit: _Unit, results: list) -> None:
        chunk = held[unit.seq]
        for row, r in zip(unit.rows, results, strict=True):
            chunk.results[row] = r
        chunk.left -= len(unit.rows)

    def _lost(self, i: int, todo: deque[_Unit], held: dict[int, _Chunk], late: bool) -> None:
        """Worker i died or ran out of time: replace it; retry its rows alone, or report them."""
        w = self.workers[i]
        unit = w.unit
        assert unit is not None
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join()
        if not w.ready:  # it died starting, not on a row: its rows go back as they were
            self.start_failures += 1
            if self.start_failures >= MAX_ATTEMPTS + 1:
                raise RuntimeError(f"decoding workers die while starting (exit code {w.proc.exitcode}, "
                                   f"{self.start_failures} in a row)")
            self.workers[i] = self._start(self.replace_ctx)
            todo.appendleft(unit)
            return
        self.deaths += 1
        why = (f"decoding took over {self.row_timeout_s:g} s (the worker was killed)" if late else
               f"the decoding worker died (exit code {w.proc.exitcode})")
        log.warning("attrx score: %s holding %d row(s); retrying them one by one", why, len(unit.tasks))
        self.workers[i] = self._start(self.replace_ctx)
        if len(unit.tasks) > 1:  # which row did it? each alone, counted once
            for row, task in zip(unit.rows, unit.tasks, strict=True):
                todo.appendleft(_Unit(unit.seq, [row], [task], attempts=1))
            return
        unit.attempts += 1
        if unit.attempts >= MAX_ATTEMPTS:
            self._fill(held, unit, [self.failed(unit.tasks[0], f"{why}, {unit.attempts} times on this row")])
        else:
            todo.appendleft(unit)

    def close(self, kill: bool = False) -> None:
        for w in self.workers:
            if kill:
                w.proc.kill()
            else:
                try:
                    w.conn.send(None)  # type: ignore[attr-defined]
                except OSError:
                    pass
        for w in self.workers:
            w.proc.join(5)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
