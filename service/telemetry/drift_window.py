"""Drift telemetry while serving: one sliding window over the products the model ran, shared by
every process of `attrx serve`.

- The front-ends compute each product's input side when they decode it (its profile:
  attrx.service.contract.drift_stats), and it travels to the inference process in the product's slot.
- The inference process is the only one that sees every product the model runs, so it keeps the
  window: per batch, the batch's bins go into a ring buffer of the last `size` products, and the
  window's counts (what went in, less what fell out) into a shared-memory block (`DriftBlock`).
- Whichever front-end answers `/metrics` or `/v1/drift` reads the window's counts and the
  reference's from the block and compares them then: nothing is compared per request or per batch,
  and every answer is computed from the one window. A re-baseline (POST /v1/drift/baseline) writes
  the window's counts as the reference, for every process at once.

Writes are guarded by a sequence number (odd while writing), so a reader never sees half a batch. The
block has one writer, the process that made it (the inference process): others attach read-only, so
two writers can never race on the sequence number (a collision left it odd, and every reader waited).
"""

from __future__ import annotations

import time
from multiprocessing import shared_memory

import numpy as np

from attrx.service.procutil import close_shared_memory, segment_name

HEADER = 8  # int64: window seq, window items, reference seq, reference items, reference source, spare...
SOURCES = ("none", "bundle", "file", "traffic")


class DriftBlock:
    """The window's and the reference's counts in shared memory (`total` bins each)."""

    def __init__(self, total: int, name: str | None = None):
        self.total = total
        size = (HEADER + 2 * total) * 8
        self.owner = name is None
        self.shm = shared_memory.SharedMemory(name=name if name is not None else segment_name("drift"),
                                              create=self.owner, size=size if self.owner else 0)
        arr = np.ndarray((HEADER + 2 * total,), np.int64, self.shm.buf)
        if self.owner:
            arr[:] = 0
        else:  # a reader (a front-end): the block has one writer, its maker, and this view cannot write
            arr.flags.writeable = False
        self.header, self.window, self.ref = arr[:HEADER], arr[HEADER:HEADER + total], arr[HEADER + total:]

    @property
    def name(self) -> str:
        return self.shm.name

    def _write(self, seq: int, items: int, dst: np.ndarray, counts: np.ndarray | None, delta: bool) -> None:
        h = self.header
        h[seq] += 1  # odd: being written
        if counts is not None:
            if delta:
                dst += counts
            else:
                dst[:] = counts
        h[seq + 1] = items
        h[seq] += 1

    def _read(self, seq: int, src: np.ndarray) -> tuple[np.ndarray, int]:
        h = self.header
        for _ in range(10000):
            s1 = int(h[seq])
            if s1 % 2 == 0:
                counts, items = src.copy(), int(h[seq + 1])
                if int(h[seq]) == s1:
                    return counts, items
            time.sleep(0)
        raise TimeoutError("the drift window is being written without end")

    # -- the inference process ---------------------------------------------------------------
    def add_window(self, delta: np.ndarray, items: int) -> None:
        self._write(0, items, self.window, delta, delta=True)

    # -- any process --------------------------------------------------------------------------
    def read_window(self) -> tuple[np.ndarray, int]:
        return self._read(0, self.window)

    def read_reference(self) -> tuple[np.ndarray | None, int, str]:
        counts, items = self._read(2, self.ref)
        source = SOURCES[int(self.header[4])] if 0 <= int(self.header[4]) < len(SOURCES) else "none"
        return (counts if items > 0 else None), items, source

    def set_reference(self, counts: np.ndarray | None, items: int, source: str) -> None:
        self.header[4] = SOURCES.index(source)
        self._write(2, items if counts is not None else 0, self.ref,
                    counts if counts is not None else np.zeros(self.total, np.int64), delta=False)

    def close(self) -> None:
        self.header = self.window = self.ref = None
        close_shared_memory(self.shm, self.owner)


class Window:
    """The last `size` products' bins (a ring buffer); their counts live in the block."""

    def __init__(self, size: int, n_stats: int, block: DriftBlock):
        self.size, self.block = size, block
        self.ring = np.zeros((size, n_stats), dtype=np.int64)
        self.pos = self.filled = 0
        self.total = block.total

    def add(self, bins: np.ndarray) -> None:
        """A batch's products (bins [N, statistics]): in, and as many of the oldest out."""
        bins = bins[-self.size:]
        n = len(bins)
        idx = (self.pos + np.arange(n)) % self.size
        delta = np.bincount(bins.ravel(), minlength=self.total)
        out = max(0, self.filled + n - self.size)
        if out:
            delta -= np.bincount(self.ring[idx[n - out:] if out < n else idx].ravel(), minlength=self.total)
        self.ring[idx] = bins
        self.pos = (self.pos + n) % self.size
        self.filled = min(self.size, self.filled + n)
        self.block.add_window(delta, self.filled)
