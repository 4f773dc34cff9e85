"""Stuck is down: a real `attrx serve` whose engine or front-end is stopped (SIGSTOP: a hung call,
a deadlock, a swapped-out process), killed, or whose model raises. Each probe failed on main
before progress health: requests hung past their deadline and /readyz said 200 throughout, an
engine's death stopped the server, and a raising batch answered 503 not_ready."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import time

import httpx
import psutil
import pytest
from helpers import metric, scrape

# short bounds, so the test waits seconds: readiness 1 s, liveness (and replacement) 3 s
FAST = {"stall_timeout_s": 1, "liveness_timeout_s": 3, "request_timeout_ms": 1000, "log_level": "info"}


def _child(server, name: str) -> int:
    pids = [c.pid for c in psutil.Process(server.proc.pid).children() if c.name() == name]
    assert len(pids) == 1, (name, pids)
    return pids[0]


def _post(server, title: str, timeout: float = 15.0) -> tuple[object, float]:
    t0 = time.monotonic()
    try:
        r = httpx.post(server.url + "/v1/extract", json={"title": title}, timeout=timeout)
        return r.status_code, time.monotonic() - t0
    except httpx.TransportError as e:
        return type(e).__name__, time.monotonic() - t0


def _status(server, path: str) -> int | str:
    try:
        return httpx.get(server.url + path, timeout=2).status_code
    except httpx.TransportError as e:
        return type(e).__name__


def _until(pred, timeout: float, step: float = 0.1) -> float | None:
    """Seconds until pred() holds, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def test_a_stopped_engine_is_seen_answered_in_time_and_replaced(start_server):
    s = start_server(workers=2, **FAST)
    assert _post(s, "Blue tee")[0] == 200
    engine = _child(s, "attrx-engine")
    os.kill(engine, signal.SIGSTOP)
    try:
        with cf.ThreadPoolExecutor(8) as ex:
            sent = [ex.submit(_post, s, f"Red dress {i}") for i in range(4)]
            seen = _until(lambda: _status(s, "/readyz") == 503, 5)
            results = [f.result() for f in sent]
        assert seen is not None, "/readyz said 200 for 5 s while the engine was stopped"
        for code, took in results:  # none hangs: answered by its deadline (1 s) plus the grace
            assert code in (503, 504) and took < 1.0 + 1.0, (code, took)
        back = _until(lambda: _post(s, "Green skirt", timeout=5)[0] == 200, 30, step=0.5)
        assert back is not None, f"200s did not resume within 30 s: {s.output()}"
    finally:
        try:
            os.kill(engine, signal.SIGCONT)
        except ProcessLookupError:
            pass  # replaced: the stalled one was killed
    assert "has made no progress" in s.output() and "replacing it" in s.output()
    assert _child(s, "attrx-engine") != engine
    assert _status(s, "/readyz") == 200 and _status(s, "/livez") == 200


def test_a_killed_engine_is_replaced_in_place(start_server):
    s = start_server(workers=2, **FAST)
    engine = _child(s, "attrx-engine")
    os.kill(engine, signal.SIGKILL)
    code, took = _post(s, "Black jeans")
    assert code in (200, 503) and took < 2.0, (code, took)  # answered at once, not left to hang
    back = _until(lambda: _post(s, "Black jeans", timeout=5)[0] == 200, 30, step=0.5)
    assert back is not None, f"200s did not resume within 30 s: {s.output()}"
    assert s.proc.poll() is None, "the server exited on its engine's death"
    assert "replacing it" in s.output()


def test_after_a_replacement_drift_reads_and_rebaselines_the_new_engines_window(start_server):
    admin = {"Authorization": "Bearer drift-admin-key-0123456789"}
    s = start_server(workers=2, drift_window=50, env={"ATTRX_ADMIN_KEY": admin["Authorization"][7:]}, **FAST)
    body = [{"title": f"Blue tee {i}"} for i in range(3)]
    assert httpx.post(s.url + "/v1/extract/batch", json=body, timeout=30).status_code == 200
    assert _until(lambda: httpx.get(s.url + "/v1/drift", timeout=5).json()["items"] == 3, 10) is not None
    os.kill(_child(s, "attrx-engine"), signal.SIGKILL)
    assert _until(lambda: _post(s, "Black jeans", timeout=5)[0] == 200, 30, step=0.5) is not None, s.output()
    # every front-end now reads the new engine's window (1 product so far), not the dead one's 3
    seen = _until(lambda: {httpx.get(s.url + "/v1/drift", timeout=5).json()["items"] for _ in range(6)} == {1}, 10)
    assert seen is not None, httpx.get(s.url + "/v1/drift", timeout=5).json()["items"]
    r = httpx.post(s.url + "/v1/drift/baseline", headers=admin, timeout=10)
    assert r.status_code == 200 and r.json()["items"] == 1
    refs = {tuple(httpx.get(s.url + "/v1/drift", timeout=5).json()["reference"].values()) for _ in range(6)}
    assert refs == {("traffic", 1)}


def test_an_engine_dying_past_the_restart_limit_stops_the_server(start_server):
    s = start_server(engine_restarts=0, **FAST)
    os.kill(_child(s, "attrx-engine"), signal.SIGKILL)
    assert s.proc.wait(timeout=30) == 1
    assert "past the limit of 0 replacements" in s.output()


def test_a_failing_batch_is_answered_500_and_the_next_is_served(start_server):
    s = start_server(env={"ATTRX_INJECT_FAULTS": "raise=0.5,seed=3"}, **FAST)
    codes = [_post(s, f"Yellow top {i}")[0] for i in range(16)]
    assert set(codes) == {200, 500}, codes
    r = httpx.post(s.url + "/v1/extract", json={"title": "x"}, timeout=5)
    while r.status_code != 500:
        r = httpx.post(s.url + "/v1/extract", json={"title": f"x{time.monotonic()}"}, timeout=5)
    assert r.json()["reason"] == "batch_failed"
    assert metric(scrape(s), "attrx_batch_failures_total", '{error="InjectedFault"}') >= codes.count(500)
    assert _status(s, "/readyz") == 200


@pytest.mark.parametrize("index", [0])
def test_a_stopped_front_end_is_killed_and_restarted(start_server, index):
    s = start_server(workers=2, **FAST)
    front = _child(s, f"attrx-front-{index}")
    os.kill(front, signal.SIGSTOP)
    gone = _until(lambda: not psutil.pid_exists(front) or psutil.Process(front).status() == psutil.STATUS_ZOMBIE, 15)
    assert gone is not None, "a stopped front-end was left in place"
    assert "has made no progress" in s.output()
    back = _until(lambda: _post(s, "Grey hoodie", timeout=5)[0] == 200 and _status(s, "/readyz") == 200, 30)
    assert back is not None, s.output()
    assert _child(s, f"attrx-front-{index}") != front
