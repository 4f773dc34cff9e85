"""The Batcher driven directly: plain functions and events instead of a model and sleeps.

A `Gate` run function records every batch it is given and can hold a batch running until the test
releases it, so each test decides exactly what is queued while what runs.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

from attrx.service.engine.batcher import Batcher, CostModel, DeadlineExceeded, Draining, QueueFull, _Job
from attrx.service.inference.predictor import batch_inputs

WAIT = 10.0  # an upper bound for events that should happen at once; never a sleep


def _item(i: int) -> dict[str, np.ndarray]:
    return {"x": np.array([[i]], dtype=np.int64)}


class Gate:
    def __init__(self, hold: bool = False):
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, items):
        inputs = batch_inputs(items)
        self.batches.append([int(v) for v in inputs["x"][:, 0]])
        self.started.set()
        assert self.release.wait(WAIT), "the test never released the batch"
        return [inputs["x"] * 2]


def _batcher(run, **kw) -> Batcher:
    b = Batcher(run, **{"max_batch_size": 4, "max_queue_delay_ms": 60_000, "max_queue_size": 8, "policy": "fixed",
                        **kw})
    b.start()
    return b


def test_a_batch_closes_at_the_size_limit_without_waiting_for_the_delay():
    run = Gate()
    b = _batcher(run)  # a delay of a minute: only the size limit can close this batch
    futs = [b.submit(_item(i), 30) for i in range(4)]
    results = [f.result(timeout=WAIT) for f in futs]
    assert run.batches == [[0, 1, 2, 3]]
    assert [r.row for r in results] == [0, 1, 2, 3] and all(r.batch_size == 4 for r in results)
    assert results[2].outputs[0][2, 0] == 4
    assert b.stop(1.0)


def test_a_batch_closes_when_its_oldest_item_has_waited_the_delay():
    run = Gate()
    b = _batcher(run, max_queue_delay_ms=50)
    t0 = time.monotonic()
    res = b.submit(_item(7), 30).result(timeout=WAIT)
    waited = time.monotonic() - t0
    assert run.batches == [[7]] and res.batch_size == 1
    assert waited >= 0.05 and res.queue_seconds >= 0.05
    assert b.stop(1.0)


def test_a_full_queue_refuses_at_once():
    run = Gate(hold=True)
    b = _batcher(run, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)
    running = b.submit(_item(0), 30)
    assert run.started.wait(WAIT)  # item 0 is running and held
    queued = [b.submit(_item(i), 30) for i in (1, 2)]
    with pytest.raises(QueueFull):
        b.submit(_item(3), 30)
    assert b.depth == 2
    run.release.set()
    assert [f.result(timeout=WAIT).outputs[0][0, 0] for f in (running, *queued)] == [0, 2, 4]
    assert b.stop(1.0)


def test_an_item_whose_deadline_passed_while_queued_is_never_run():
    run = Gate(hold=True)
    expired = threading.Event()
    b = _batcher(run, max_batch_size=1, max_queue_delay_ms=0, on_expired=expired.set)
    b.submit(_item(0), 30)
    assert run.started.wait(WAIT)
    late = b.submit(_item(1), 0.01)  # queued behind the held batch, with a 10 ms deadline
    ok = b.submit(_item(2), 30)
    threading.Event().wait(0.05)  # let the 10 ms deadline pass (a bound, not a guess)
    run.release.set()
    with pytest.raises(DeadlineExceeded):
        late.result(timeout=WAIT)
    assert ok.result(timeout=WAIT).outputs[0][0, 0] == 4
    assert expired.is_set() and [1] not in run.batches
    assert b.stop(1.0)


def test_a_cancelled_item_is_skipped():
    run = Gate(hold=True)
    b = _batcher(run, max_batch_size=4, max_queue_delay_ms=0)
    b.submit(_item(0), 30)
    assert run.started.wait(WAIT)
    gone = b.submit(_item(1), 30)
    kept = b.submit(_item(2), 30)
    assert gone.cancel()  # the client left while its item was queued
    run.release.set()
    assert kept.result(timeout=WAIT).batch_size == 1
    with pytest.raises(CancelledError):
        gone.result(timeout=0)
    assert run.batches == [[0], [2]]
    assert b.stop(1.0)


def test_drain_runs_what_is_queued_at_once_then_stop_refuses():
    run = Gate()
    b = _batcher(run)  # a minute's delay: only draining can close this half-full batch
    futs = [b.submit(_item(i), 30) for i in range(2)]
    assert not run.started.is_set()
    b.flush()
    assert [f.result(timeout=WAIT).batch_size for f in futs] == [2, 2]
    # work admitted before the drain may still arrive from decoding: it runs at once too
    assert b.submit(_item(5), 30).result(timeout=WAIT).batch_size == 1
    assert b.stop(1.0)
    with pytest.raises(Draining):
        b.submit(_item(9), 30)


def test_stop_past_its_timeout_fails_what_is_still_queued():
    run = Gate(hold=True)
    b = _batcher(run, max_batch_size=1, max_queue_delay_ms=0)
    running = b.submit(_item(0), 30)
    assert run.started.wait(WAIT)
    queued = b.submit(_item(1), 30)
    assert b.stop(0.05) is False  # the held batch outlasts the drain
    with pytest.raises(Draining):
        queued.result(timeout=WAIT)
    run.release.set()
    assert running.result(timeout=WAIT).outputs[0][0, 0] == 0


def test_a_failing_model_fails_every_item_of_its_batch_and_the_batcher_goes_on():
    calls = []

    def run(items):
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("model exploded")
        return [batch_inputs(items)["x"]]

    b = _batcher(run)
    futs = [b.submit(_item(i), 30) for i in range(4)]
    for f in futs:
        with pytest.raises(RuntimeError, match="exploded"):
            f.result(timeout=WAIT)
    again = [b.submit(_item(i), 30) for i in range(4)]
    assert [f.result(timeout=WAIT).row for f in again] == [0, 1, 2, 3]
    assert b.stop(1.0)


# -- adaptive batching (the default) ------------------------------------------------------------

def test_adaptive_runs_a_lone_item_at_once_however_long_the_delay():
    run = Gate()
    b = _batcher(run, policy="adaptive")  # a minute's delay, never waited out for company
    assert b.submit(_item(7), 30).result(timeout=WAIT).batch_size == 1
    assert run.batches == [[7]]
    assert b.stop(1.0)


def test_adaptive_forms_the_next_batch_from_what_queued_while_one_ran():
    run = Gate(hold=True)
    b = _batcher(run, policy="adaptive", max_batch_size=3)
    first = b.submit(_item(0), 30)
    assert run.started.wait(WAIT)  # item 0 runs alone; 1..4 queue meanwhile
    rest = [b.submit(_item(i), 30) for i in range(1, 5)]
    run.release.set()
    assert first.result(timeout=WAIT).batch_size == 1
    assert [f.result(timeout=WAIT).batch_size for f in rest] == [3, 3, 3, 1]
    assert run.batches == [[0], [1, 2, 3], [4]]
    assert b.stop(1.0)


def test_adaptive_waits_only_where_the_fixed_cost_outweighs_the_queue():
    b = Batcher(lambda items: [], max_batch_size=32, max_queue_delay_ms=50, policy="adaptive")
    b._accepting = True
    for n, t in [(1, 0.010), (32, 0.0410), (1, 0.010), (32, 0.0410)]:  # 10 ms fixed, 1 ms per item
        b.costs.observe(n, t)
    assert b.costs.fixed_cost == pytest.approx(0.009, abs=1e-6)
    now = time.monotonic()
    b._queue.append(_Job(_item(0), now + 30))
    b.arrivals._gap, b.arrivals._last = 0.001, now  # 1,000 items/s: ~9 arrive within one overhead
    assert 0.0 < b._wait_s() <= 0.050
    b.arrivals._gap = 1.0  # 1 item/s: waiting would idle the engine for nothing
    assert b._wait_s() == 0.0


def test_cost_model_without_two_sizes_knows_no_fixed_cost():
    m = CostModel()
    for _ in range(5):
        m.observe(8, 0.02)
    assert m.fixed_cost == 0.0


def test_items_with_one_key_in_a_batch_run_once_and_each_gets_its_row():
    run = Gate()
    b = _batcher(run, max_batch_size=4)
    futs = [b.submit(_item(i), 30, key=k) for i, k in [(5, "a"), (5, "a"), (6, "b"), (7, None)]]
    results = [f.result(timeout=WAIT) for f in futs]
    assert run.batches == [[5, 6, 7]]  # the model saw product "a" once
    assert [int(r.outputs[0][r.row, 0]) for r in results] == [10, 10, 12, 14]
    assert all(r.batch_size == 4 for r in results)
    assert b.stop(1.0)


def test_a_follower_reads_the_situations_its_lead_decoded():
    """The engine copies the lead's profile into a follower's slot; the follower reads its situations
    back from it instead of matching the title again."""
    from attrx.service.contract.decode import situations_of
    from attrx.service.contract.drift_stats import PROFILE_KEY
    from attrx.service.contract.situations import SITUATIONS
    from attrx.service.engine.shm import Arena, Layout

    item = {"input_ids": np.zeros((1, 4), np.int64), PROFILE_KEY: np.zeros((1, 5), np.float32)}
    arena = Arena(Layout.of(item, [np.zeros((2, 3), np.float32)]), 2)
    try:
        lead = np.asarray([[1, 4, 12.0, 64.0, 0.3]], np.float32)  # silent+image, silent+no_image; inputs
        arena.write_profile(1, lead)
        got = arena.read_profile(1)
        assert np.array_equal(got, lead) and got is not lead
        assert situations_of(got, 2) == [SITUATIONS[1], SITUATIONS[4]]
    finally:
        arena.close()


@pytest.mark.parametrize("where", ["run", "complete"])
def test_a_batch_that_raises_answers_its_items_and_the_thread_lives_on(where):
    # before, an exception in the completion step ended the only inference thread: every later
    # request waited for its deadline while the server said ready
    calls, failures = [], []

    def run(items):
        calls.append(len(items))
        if where == "run" and len(calls) == 1:
            raise RuntimeError("boom")
        return [np.zeros((len(items), 2), np.float32)]

    def complete(jobs, outputs, t0, dt):
        if len(calls) == 1:
            raise RuntimeError("boom")
        for i, j in enumerate(jobs):
            j.future.set_result(i)

    b = Batcher(run, max_batch_size=4, max_queue_delay_ms=1, on_failure=failures.append,
                on_complete=complete if where == "complete" else None)
    b.start()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            b.submit(_item(0), 5.0).result(timeout=5)
        assert b.submit(_item(1), 5.0).result(timeout=5) is not None  # the next batch is served
        assert [type(e) for e in failures] == [RuntimeError]
    finally:
        b.stop(1.0)
