"""Progress, not presence: what the engine and each front-end publish in shared memory, and how a
stall is read from it.

The supervisor makes one block of doubles (`Progress.create`) and hands it to every process. The
engine writes its fields (`time.monotonic`, the same clock in every process):

- `beat`: the inference thread's heartbeat, written when it wakes with nothing to do (at least
  every `TICK_S`) and at the start and end of every batch;
- `busy_since`: when the batch now running started (0: none runs);
- `last_done`: when the last batch completed;
- `oldest`: when the oldest item now queued was queued (0: none is);
- `bound`: the stall bound in seconds, `max(stall_timeout_s, 4 x the slowest recent batch) +
  the batching delay`, so neither a model whose batches are slow nor a queue that waits for
  company by design is called stalled.

Each front-end writes its own pair: the heartbeat of its event loop and how late that loop's last
tick was. Any process reads how long a process has gone without progress with
`engine_stalled_for` and `front_stalled_for`. `/readyz` turns 503 once that passes `bound`,
`/livez` once it passes `liveness_timeout_s`, where the supervisor also replaces the process.
"""

from __future__ import annotations

import time

TICK_S = 0.25  # the engine's idle heartbeat and the front-ends' loop tick
BEAT, BUSY, DONE, OLDEST, BOUND = range(5)
ENGINE_FIELDS = 8
FRONT_BEAT, FRONT_LAG = range(2)


class Progress:
    """A view on the shared block (a `multiprocessing` RawArray of doubles, or a list in tests)."""

    def __init__(self, values, fronts: int):
        self.v, self.fronts = values, fronts

    @classmethod
    def create(cls, ctx, fronts: int) -> Progress:
        p = cls(ctx.RawArray("d", ENGINE_FIELDS + 2 * fronts), fronts)
        p.reset_engine(time.monotonic())
        return p

    # -- the engine writes ------------------------------------------------------------------
    def reset_engine(self, now: float, bound: float = 0.0) -> None:
        """A new engine: nothing queued or running, a fresh heartbeat."""
        v = self.v
        v[BEAT], v[BUSY], v[DONE], v[OLDEST] = now, 0.0, now, 0.0
        if bound:
            v[BOUND] = bound

    def beat(self, now: float) -> None:
        self.v[BEAT] = now

    def batch_started(self, now: float) -> None:
        self.v[BEAT] = self.v[BUSY] = now

    def batch_done(self, now: float) -> None:
        v = self.v
        v[BEAT] = v[DONE] = now
        v[BUSY] = 0.0

    def queued_since(self, t: float) -> None:
        self.v[OLDEST] = t

    def set_bound(self, seconds: float) -> None:
        self.v[BOUND] = seconds

    @property
    def bound(self) -> float:
        return self.v[BOUND]

    # -- a front-end writes -----------------------------------------------------------------
    def front_beat(self, i: int, now: float, lag: float) -> None:
        base = ENGINE_FIELDS + 2 * i
        self.v[base + FRONT_BEAT], self.v[base + FRONT_LAG] = now, lag

    def clear_front(self, i: int) -> None:
        """A front-end (re)starting: not watched until its event loop first ticks."""
        self.front_beat(i, 0.0, 0.0)

    # -- anyone reads -----------------------------------------------------------------------
    def engine_stalled_for(self, now: float, waiting_since: float = 0.0) -> float:
        """How long the engine has gone without the progress it owes (compare with `bound`): the
        running batch's age; else the age of its heartbeat; and the age of the oldest waiting work
        since the last batch completed. `waiting_since`: when the caller's own oldest unanswered
        item was sent (0: none), since an engine that has stopped cannot report what is still in
        its socket."""
        v = self.v
        busy, done = v[BUSY], v[DONE]
        age = now - busy if busy else now - v[BEAT]
        for since in (v[OLDEST], waiting_since):
            if since:
                age = max(age, now - max(since, done))
        return max(0.0, age)

    def stalled(self, now: float, waiting_since: float = 0.0) -> bool:
        return self.engine_stalled_for(now, waiting_since) > self.bound

    def front_stalled_for(self, i: int, now: float) -> float:
        """How long front-end i's event loop has gone without ticking (or how late its last tick was)."""
        base = ENGINE_FIELDS + 2 * i
        beat = self.v[base + FRONT_BEAT]
        if not beat:
            return 0.0
        return max(0.0, now - beat, self.v[base + FRONT_LAG])
