"""Identical products answered once: requests in flight together share one decoding and one
inference, and an optional bounded response cache answers repeats.

A product's key is a hash of its title and image bytes, taken before decoding (decoding is most of
a request's cost). Requests with one key share the work (`InFlight`); each still applies its own
options (`min_precision`, `top_k`) to the shared model outputs, so options need not match to
share. The response cache (`ResponseCache`, off by default) stores finished predictions under
the key, the bundle's identity (sha256 of its manifest, which lists every file's sha256) and the
options.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Future


def product_key(title: str | None, image: bytes | None) -> bytes:
    """16 bytes naming a product by its contents (title and image bytes, each length-prefixed)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (None if title is None else title.encode("utf-8"), image):
        if part is None:
            h.update(b"\xff" * 8)
        else:
            h.update(struct.pack("<Q", len(part)))
            h.update(part)
    return h.digest()


def engine_key(key: bytes | None) -> int:
    """The key as the engine's batcher sees it (an integer; 0: none), for sharing across front-ends."""
    if key is None:
        return 0
    return int.from_bytes(key[:8], "little") or 1


class SharedKeys:
    """The engine keys of the products being worked on, all front-ends together: a hint in shared
    memory (direct-mapped by key, no lock). A request whose product is there follows that work
    through the engine instead of decoding it again; a stale entry or a collision costs one
    "miss" (the request then does the work itself), never a wrong answer."""

    def __init__(self, table=None, size: int = 4096):
        self.table = table if table is not None else [0] * size
        self.n = len(self.table)

    def seen(self, key: int) -> bool:
        return key != 0 and self.table[key % self.n] == key

    def add(self, key: int) -> None:
        self.table[key % self.n] = key

    def discard(self, key: int) -> None:
        i = key % self.n
        if self.table[i] == key:
            self.table[i] = 0


class Shared:
    """One product's work in flight and the requests waiting on it."""

    def __init__(self, key: bytes | None):
        self.key = key
        self.task: asyncio.Task | None = None
        self.waiters = 1
        self.decoding: Future | None = None  # the decoding pool's future, while it is the stage
        self.cancel_queued: Callable[[], bool] | None = None  # asks the engine to skip it, once queued

    def leave(self) -> bool:
        """A waiter leaves (client gone, deadline). The last one stops the work if it has not
        started: True if it never will run; False if it runs on (its answer still comes)."""
        self.waiters -= 1
        if self.waiters > 0:
            return False
        if self.decoding is not None and self.decoding.cancel():
            return True
        if self.cancel_queued is not None:
            return self.cancel_queued()
        return False


class InFlight:
    """Products being worked on in this front-end, by key."""

    def __init__(self):
        self._work: dict[bytes, Shared] = {}
        self.shared = 0  # requests answered from another request's work

    def join(self, key: bytes) -> Shared | None:
        s = self._work.get(key)
        if s is not None and s.task is not None and not s.task.done():
            s.waiters += 1
            self.shared += 1
            return s
        return None

    def start(self, key: bytes | None, coro_of: Callable[[Shared], Awaitable]) -> Shared:
        """Start the work for key (None: not shared) as a task; it leaves the table when done."""
        s = Shared(key)
        s.task = asyncio.ensure_future(coro_of(s))
        s.task.add_done_callback(_retrieved)
        if key is not None:
            self._work[key] = s
            s.task.add_done_callback(lambda _t: self._work.pop(key, None) if self._work.get(key) is s else None)
        return s

    def __len__(self) -> int:
        return len(self._work)


def _retrieved(task: asyncio.Task) -> None:
    """Work whose every waiter left may end in an error nobody reads: read it, so asyncio does not
    log it as lost."""
    if not task.cancelled():
        task.exception()


class ResponseCache:
    """A bounded LRU of finished predictions (entries=0: off). Used from the event loop only."""

    def __init__(self, entries: int, bundle_id: str):
        self.entries, self.bundle_id = entries, bundle_id
        self._lru: OrderedDict[tuple, tuple[dict, dict | None]] = OrderedDict()
        self.hits = self.misses = 0

    @property
    def on(self) -> bool:
        return self.entries > 0

    def key(self, product: bytes, options: tuple) -> tuple:
        return (self.bundle_id, product, options)

    def get(self, key: tuple) -> tuple[dict, dict | None] | None:
        found = self._lru.get(key)
        if found is None:
            self.misses += 1
            return None
        self._lru.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: tuple, value: tuple[dict, dict | None]) -> None:
        self._lru[key] = value
        self._lru.move_to_end(key)
        while len(self._lru) > self.entries:
            self._lru.popitem(last=False)
