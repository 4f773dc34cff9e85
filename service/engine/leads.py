"""Products one front-end is working on that other front-ends follow: deduplication across
processes.

A front-end that starts on a product announces its key ("lead"); another front-end that gets the
same product meanwhile asks to follow it instead of decoding it again. When the leader's batch
has run, every follower's slot gets the leader's output row. A lead that ends without outputs
(dropped before it was queued, expired, cancelled, failed, or its front-end died) answers its
followers "miss", and each then does the work itself. A follow for a key nobody leads is a miss
at once, so a follower never waits on a lead that does not exist.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class _Lead:
    link: object
    followers: list[tuple[object, int]] = field(default_factory=list)  # (link, slot)


class Leads:
    """Thread-safe: each front-end's reader thread and the batcher's thread use it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_key: dict[int, _Lead] = {}

    def lead(self, key: int, link) -> None:
        with self._lock:
            self._by_key.setdefault(key, _Lead(link))

    def follow(self, key: int, link, slot: int) -> bool:
        """True: the slot will be answered when the lead ends. False: nobody leads this key."""
        with self._lock:
            lead = self._by_key.get(key)
            if lead is None:
                return False
            lead.followers.append((link, slot))
            return True

    def end(self, key: int, link) -> list[tuple[object, int]]:
        """The lead of key by link is over: its followers, to be answered."""
        with self._lock:
            lead = self._by_key.get(key)
            if lead is None or lead.link is not link:
                return []
            del self._by_key[key]
            return lead.followers

    def end_link(self, link) -> list[tuple[object, int]]:
        """Every lead of a front-end that has gone: their followers, to be answered "miss"."""
        with self._lock:
            gone = [k for k, lead in self._by_key.items() if lead.link is link]
            return [f for k in gone for f in self._by_key.pop(k).followers]

    def __len__(self) -> int:
        return len(self._by_key)
