"""Batch jobs that never hang and account for every row: `attrx score` with an image that blocks on
read, a decoding worker killed mid-run, a row that kills its worker every time, and too many bad
rows. On main before, the first two hung for ever."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import long_catalog

from attrx.cli import main


def _ids(path: Path) -> list[str]:
    return [json.loads(x)["id"] for x in path.read_text().splitlines() if x.strip()]


def _catalog(tmp_path: Path, rows: list[tuple[str, str, str]]) -> Path:
    cat = tmp_path / "cat.csv"
    with open(cat, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "image"])
        w.writerows(rows)
    return cat


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "attrx")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)


def test_an_image_that_blocks_on_read_is_a_row_error_not_a_hang(demo_catalog, bundle, tmp_path):
    image = next(p for p in sorted((demo_catalog.parent).rglob("*.jpg")))
    fifo = tmp_path / "blocks.jpg"
    os.mkfifo(fifo)
    cat = _catalog(tmp_path, [("a", "Blue tee", str(image)), ("b", "Red dress", str(fifo)),
                              ("c", "Green skirt", str(tmp_path))])
    out = tmp_path / "pred.jsonl"
    r = _run(["score", str(cat), "--bundle", str(bundle), "--out", str(out), "--quiet", "--workers", "1"], 60)
    assert r.returncode == 0, r.stderr
    assert _ids(out) == ["a"]
    errors = {e["id"]: e["reason"] for e in map(json.loads, out.with_name(out.name + ".errors.jsonl").open())}
    assert "a FIFO" in errors["b"] and "a directory" in errors["c"], errors


def test_images_outside_the_named_folders_are_refused(demo_catalog, bundle, tmp_path):
    image = next(p for p in sorted((demo_catalog.parent).rglob("*.jpg")))
    local = tmp_path / "here.jpg"
    local.write_bytes(image.read_bytes())
    cat = _catalog(tmp_path, [("in", "Blue tee", str(local)), ("out", "Red dress", str(image))])
    out = tmp_path / "pred.jsonl"
    main(["score", str(cat), "--bundle", str(bundle), "--out", str(out), "--quiet", "--workers", "1",
          "--image-root", str(tmp_path / "nothing-else")])
    assert _ids(out) == ["in"]  # the catalog's own folder is allowed
    err = json.loads(out.with_name(out.name + ".errors.jsonl").read_text())
    assert err["id"] == "out" and "outside the folders" in err["reason"]


def test_more_failed_rows_than_max_errors_exit_3(messy_catalog, bundle, tmp_path):
    out = tmp_path / "pred.jsonl"
    r = _run(["score", str(messy_catalog), "--bundle", str(bundle), "--out", str(out), "--quiet",
              "--max-errors", "0"], 120)
    assert r.returncode == 3 and "more than --max-errors 0" in r.stderr, (r.returncode, r.stderr[-2000:])
    r = _run(["score", str(messy_catalog), "--bundle", str(bundle), "--out", str(out), "--quiet", "--overwrite",
              "--max-errors", "1000"], 120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_decoding_worker_killed_mid_run_loses_no_row(demo_catalog, bundle, tmp_path):
    cat, ids = long_catalog(demo_catalog, tmp_path)
    out = tmp_path / "pred.jsonl"
    exe = str(Path(sys.executable).parent / "attrx")
    proc = subprocess.Popen([exe, "score", str(cat), "--bundle", str(bundle), "--out", str(out), "--batch-size", "4",
                             "--workers", "2", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = []

    def kill_a_worker() -> None:
        end = time.monotonic() + 60
        while time.monotonic() < end and not killed:
            if out.exists() and out.stat().st_size > 2000:
                kids = psutil.Process(proc.pid).children()
                if kids:
                    os.kill(kids[0].pid, signal.SIGKILL)  # as the OOM killer does
                    killed.append(kids[0].pid)
            time.sleep(0.01)

    t = threading.Thread(target=kill_a_worker)
    t.start()
    try:
        _, err = proc.communicate(timeout=180)
    finally:
        t.join()
        proc.kill()
    assert killed, "no worker was found to kill"
    assert proc.returncode == 0, err[-2000:]
    got = _ids(out)
    errors = _ids(out.with_name(out.name + ".errors.jsonl"))
    assert sorted(got + errors) == sorted(ids) and len(got) == len(set(got)), (len(got), len(errors), len(ids))


# -- the pool itself, with a row that kills its worker every time ---------------------------------
def _init() -> None:
    pass


def _decode_or_die(task):
    if task == "poison":
        os.kill(os.getpid(), signal.SIGKILL)
    if task == "hang":
        time.sleep(3600)
    return ("ok", task)


@pytest.mark.parametrize("bad", ["poison", "hang"])
def test_a_row_that_takes_its_worker_down_twice_is_reported_and_the_rest_decoded(bad):
    from attrx.service.catalog.decode_pool import DecodePool

    tasks = [f"t{i}" for i in range(30)]
    tasks[13] = bad
    chunks = [tasks[i : i + 4] for i in range(0, len(tasks), 4)]
    pool = DecodePool(2, _init, (), _decode_or_die, lambda task, why: ("failed", task, why), row_timeout_s=1.0)
    try:
        t0 = time.monotonic()
        results = [r for chunk in pool.map_chunks(chunks, threading.Event()) for r in chunk]
        took = time.monotonic() - t0
    finally:
        pool.close()
    assert [r[1] for r in results] == tasks  # every row, in order
    failed = [r for r in results if r[0] == "failed"]
    assert [r[1] for r in failed] == [bad] and "2 times" in failed[0][2], failed
    assert pool.deaths == 2 and took < 30, (pool.deaths, took)
