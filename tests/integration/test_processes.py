"""`attrx serve` as processes: front-ends feeding one inference process through shared memory.

The slots are unit-tested; the rest runs real `attrx serve` servers with two front-end processes
and checks that the server behaves as one: one admission limit, one metrics view, one life cycle.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import time

import httpx
import numpy as np
import psutil
import pytest

from attrx.service.engine.shm import Arena, Layout


# -- the slots --------------------------------------------------------------------------------------
def _item(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, 300, (1, 24)), "pixel_values": rng.random((1, 3, 8, 8), dtype=np.float32),
            "text_present": np.ones(1, np.float32)}


def test_a_slot_carries_inputs_and_one_output_row_and_a_cancel_flag():
    outputs = [np.arange(12, dtype=np.float32).reshape(4, 3), np.arange(8, dtype=np.float32).reshape(4, 2)]
    layout = Layout.of(_item(0), outputs)
    owner = Arena(layout, 3)
    try:
        other = Arena(layout, 3, name=owner.name)  # as the inference process attaches it
        for k in range(3):
            owner.write_inputs(k, _item(k))
        for k in range(3):
            got = other.inputs(k)
            for name, arr in _item(k).items():
                np.testing.assert_array_equal(got[name], arr)
        other.write_outputs(1, outputs, row=2)
        back = owner.read_outputs(1)
        np.testing.assert_array_equal(back[0], outputs[0][2:3])
        np.testing.assert_array_equal(back[1], outputs[1][2:3])
        assert not other.cancelled(1)
        owner.cancel(1)
        assert other.cancelled(1) and not other.cancelled(0)
        owner.write_inputs(1, _item(5))  # a reused slot starts uncancelled
        assert not other.cancelled(1)
        with pytest.raises(ValueError, match="pixel_values has shape"):
            owner.write_inputs(0, {**_item(0), "pixel_values": np.zeros((1, 3, 9, 9), np.float32)})
        other.close()
    finally:
        owner.close()


# -- the server as processes ------------------------------------------------------------------------
def _processes(server) -> dict[str, psutil.Process]:
    kids = psutil.Process(server.proc.pid).children()
    return {p.name(): p for p in kids if p.name().startswith("attrx-")}


def _metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + labels + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_the_server_runs_one_engine_and_the_front_ends_asked_for(start_server):
    s = start_server(workers=3)
    assert sorted(_processes(s)) == ["attrx-engine", "attrx-front-0", "attrx-front-1", "attrx-front-2"]
    assert httpx.get(s.url + "/v1/model", timeout=5).json()["backend"] == "onnxruntime"


def test_decoding_threads_can_run_behind_the_event_loop(start_server):
    import os

    s = start_server(workers=2, preprocess_nice=7)
    for name, proc in _processes(s).items():
        nice = {os.getpriority(os.PRIO_PROCESS, t.id) for t in proc.threads()}
        if name.startswith("attrx-front"):
            assert nice == {0, 7}, f"{name}: {nice}"  # the event loop at 0, the decoding thread at 7
        else:
            assert nice == {0}, f"{name}: {nice}"


def test_metrics_are_one_view_whichever_front_end_answers(start_server):
    s = start_server(workers=2)
    n = 24
    for i in range(n):  # a new connection each: the kernel spreads them over both front-ends
        assert httpx.post(s.url + "/v1/extract", json={"title": f"Tee {i}"}, timeout=10).status_code == 200
    seen = set()
    for _ in range(8):
        text = httpx.get(s.url + "/metrics", timeout=5).text
        seen.add(_metric(text, "attrx_requests_total", '{code="200",endpoint="/v1/extract"}'))
        assert _metric(text, "attrx_items_total") == n
        assert _metric(text, "attrx_batch_size_sum") >= n  # the engine's own metrics, in the same view
        assert _metric(text, "attrx_ready") == 1
    assert seen == {float(n)}


def test_a_dead_inference_process_past_its_restart_limit_stops_the_server_with_a_failure_status(start_server):
    # engine_restarts=0: no replacement (tests/integration/test_stalls.py: the engine replaced in place)
    s = start_server(workers=2, engine_restarts=0)
    procs = _processes(s)
    procs["attrx-engine"].send_signal(signal.SIGKILL)
    r = None
    try:
        r = httpx.post(s.url + "/v1/extract", json={"title": "Tee"}, timeout=10)
    except httpx.TransportError:
        pass  # the front-ends may already be gone
    if r is not None:
        assert r.status_code == 503
    assert s.proc.wait(timeout=60) == 1
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs.values())


def test_a_killed_front_end_is_restarted_alone_while_the_others_serve(start_server):
    s = start_server(workers=2, log_level="info")
    before = _processes(s)
    victim = before["attrx-front-0"]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    # the other front-end answers meanwhile (new connections: the kernel spreads them over both sockets;
    # the dead one's connections wait in its backlog for the replacement)
    with cf.ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda i: httpx.post(s.url + "/v1/extract", json={"title": f"Cap {i}"}, timeout=15),
                         range(16)))
    assert [r.status_code for r in rs] == [200] * 16
    s.wait_ready(10)
    after = _processes(s)
    assert after["attrx-front-0"].pid != victim.pid
    assert after["attrx-front-1"].pid == before["attrx-front-1"].pid
    assert after["attrx-engine"].pid == before["attrx-engine"].pid
    text = httpx.get(s.url + "/metrics", timeout=5).text
    assert _metric(text, "attrx_in_flight") == 0  # the dead process's admissions were given back
    for i in range(8):
        assert httpx.post(s.url + "/v1/extract", json={"title": f"Tee {i}"}, timeout=10).status_code == 200
    assert "restarting it (1 of 5 restarts" in s.output()
    assert s.proc.poll() is None


def test_past_its_restart_limit_the_server_gives_up_with_a_failure_status(start_server):
    s = start_server(workers=2, front_end_restarts=1, log_level="info")
    for k in range(2):
        victim = _processes(s)["attrx-front-1"]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        if k == 0:
            s.wait_ready(10)
    assert s.proc.wait(timeout=60) == 1
    assert "2 front-end failures within 60 s, past the limit of 1 restarts; stopping"  in s.output()


def test_killing_the_parent_takes_every_server_process_with_it(start_server):
    s = start_server(workers=2)
    procs = list(_processes(s).values())
    s.proc.kill()
    s.proc.wait(timeout=10)
    gone, alive = psutil.wait_procs(procs, timeout=15)
    assert not alive, f"{[p.name() for p in alive]} outlived a SIGKILLed parent"


def test_a_drain_waits_for_work_admitted_by_every_front_end(start_server):
    # a long batch delay holds the products in the engine's queue when SIGTERM comes
    s = start_server(workers=2, batching="fixed", max_queue_delay_ms=1500, max_batch_size=64, drain_timeout_s=20)
    with cf.ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(httpx.post, s.url + "/v1/extract", json={"title": f"Cap {i}"}, timeout=30)
                for i in range(8)]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = httpx.get(s.url + "/metrics", timeout=5).text
            if _metric(text, "attrx_in_flight") == 8:
                break
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        codes = [f.result().status_code for f in futs]
    assert codes == [200] * 8
    assert s.proc.wait(timeout=30) == 0


def test_a_port_in_use_is_a_clear_error(bundle):
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exe = str(Path(sys.executable).parent / "attrx")
        r = subprocess.run([exe, "serve", "--bundle", str(bundle), "--port", str(port)], capture_output=True,
                           text=True, timeout=60)
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_second_server_on_the_same_port_is_refused(start_server, bundle):
    import subprocess
    import sys
    from pathlib import Path

    s = start_server(workers=2)  # its sockets use SO_REUSEPORT; another attrx must still not join them
    exe = str(Path(sys.executable).parent / "attrx")
    r = subprocess.run([exe, "serve", "--bundle", str(bundle), "--port", str(s.port)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "Address already in use" in r.stderr


# -- identical products ---------------------------------------------------------------------------
def _same_product_at_once(s, n: int, image: bytes) -> list[httpx.Response]:
    def one(_):  # a new connection each: the kernel spreads them over both front-ends
        return httpx.post(s.url + "/v1/extract", data={"title": "Roadster Men Grey Tee"},
                          files={"image": ("p.png", image, "image/png")}, timeout=30)

    with cf.ThreadPoolExecutor(n) as ex:
        return list(ex.map(one, range(n)))


def test_identical_products_in_flight_are_decoded_and_run_once_across_front_ends(start_server):
    from helpers import png

    heavy = png(3000, 3000, fill=0x55)  # long to decode: the others arrive while the first decodes
    s = start_server(workers=2)
    rs = _same_product_at_once(s, 12, heavy)
    assert [r.status_code for r in rs] == [200] * 12
    assert len({json.dumps(r.json()["predictions"], sort_keys=True) for r in rs}) == 1  # one answer
    text = httpx.get(s.url + "/metrics", timeout=5).text
    ran = _metric(text, "attrx_items_total")
    shared = _metric(text, "attrx_shared_requests_total")
    # one product, leading in at most each front-end; every other request shared its work
    assert ran <= 2 and shared >= 12 - ran, (ran, shared)

    off = start_server(workers=2, no_dedup=True)
    rs = _same_product_at_once(off, 12, heavy)
    assert [r.status_code for r in rs] == [200] * 12
    text = httpx.get(off.url + "/metrics", timeout=5).text
    assert _metric(text, "attrx_shared_requests_total") == 0
    assert _metric(text, "attrx_batch_size_sum") >= 12  # without dedup, every request ran


def test_the_response_cache_answers_a_repeated_product_without_the_model(start_server):
    s = start_server(workers=1, response_cache=8)
    body = {"title": "Velora Women Red Dress", "top_k": 2}
    first = httpx.post(s.url + "/v1/extract", json=body, timeout=10).json()
    again = httpx.post(s.url + "/v1/extract", json=body, timeout=10).json()
    other = httpx.post(s.url + "/v1/extract", json={**body, "top_k": 1}, timeout=10).json()  # other options
    assert again["predictions"] == first["predictions"]
    assert len(other["predictions"]["colour"]["top_k"]) == 1
    text = httpx.get(s.url + "/metrics", timeout=5).text
    assert _metric(text, "attrx_response_cache_total", '{result="hit"}') == 1
    assert _metric(text, "attrx_response_cache_total", '{result="miss"}') == 2
    assert _metric(text, "attrx_items_total") == 2
    assert httpx.get(s.url + "/v1/model", timeout=5).json()["batching"]["response_cache"] == 8


PID1_SCRIPT = """
import multiprocessing as mp, os
from attrx.service.procutil import die_with_parent

def child(q):
    die_with_parent()
    q.put(os.getppid())

if __name__ == "__main__":
    assert os.getpid() == 1, os.getpid()
    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=child, args=(q,))
    p.start()
    p.join(60)
    print("child", p.exitcode, q.get(timeout=5) if not q.empty() else "gone")
"""


def test_children_of_a_pid_1_parent_do_not_take_themselves_for_orphans(tmp_path):
    """In a container `attrx serve` is pid 1: its engine and front-ends have parent pid 1 while the
    parent lives, and must not leave as if re-parented (they did, and the image never served). Run
    here in a new pid namespace, where the script is pid 1."""
    import shutil
    import subprocess
    import sys

    if not shutil.which("unshare"):
        pytest.skip("util-linux's unshare is not installed")
    script = tmp_path / "pid1.py"
    script.write_text(PID1_SCRIPT)
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(script)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 and "Operation not permitted" in r.stderr:
        pytest.skip("no permission for a new pid namespace here (unshare needs root or user namespaces)")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "child 0 1", r.stdout  # it ran on, and its parent was pid 1
