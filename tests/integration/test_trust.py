"""What to trust, through real servers and real scoring runs on the tiny bundle: answers at the
family level, /v1/model's families and certification fields, the review queue's family, and the
accuracy estimate, the same in the server's gauge and in attrx score's meta file."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

EXE = str(Path(sys.executable).parent / "attrx")


def _answers(server, products, precision: str = "0.95") -> list[dict]:
    out = []
    for i in range(0, len(products), 32):
        body = [{"title": p.title, "min_precision": float(precision),
                 **({"image_base64": base64.b64encode(p.image.read_bytes()).decode()} if p.image else {})}
                for p in products[i:i + 32]]
        r = httpx.post(server.url + "/v1/extract/batch", json=body, timeout=60)
        assert r.status_code == 200, r.text[:500]
        out += [x["predictions"] for x in r.json()["results"]]
    return out


def test_answers_carry_the_finest_accepted_level(server, demo_catalog):
    from attrx.service.catalog.reader import read_catalog

    products = read_catalog(demo_catalog).products[:160]
    answers = [a["colour"] for p in ("0.90", "0.95") for a in _answers(server, products, p)]
    levels = {"value": 0, "family": 0, None: 0}
    for c in answers:
        levels[c["accepted_level"]] += 1
        assert (c["accepted_level"] == "value") == c["accepted"]
        fam = c["family"]
        assert (fam is not None) == (c["value"] in ("blue", "teal"))  # the default family Blue
        if fam is not None:
            assert fam["name"] == "Blue" and fam["confidence"] >= c["confidence"]
            assert fam["accepted"] == (c["accepted_level"] == "family")
            if fam["accepted"]:
                assert not c["accepted"] and fam["confidence"] >= fam["threshold"]
    assert levels["family"] > 0 and levels["value"] > 0 and levels[None] > 0, levels
    info = httpx.get(server.url + "/v1/model", timeout=10).json()
    colour = next(a for a in info["attributes"] if a["name"] == "colour")
    assert colour["families"]["names"] == ["Blue"] and colour["families"]["source"] == "default"
    assert sum(k == 0 for k in colour["families"]["of_class"]) == 2


def test_the_review_queue_says_the_family_is_accepted(bundle, demo_catalog, tmp_path):
    out, queue = tmp_path / "scored.jsonl", tmp_path / "queue.jsonl"
    r = subprocess.run([EXE, "score", str(demo_catalog), "--bundle", str(bundle), "--out", str(out),
                        "--review-queue", str(queue), "--min-precision", "0.95", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    at_family = [x for x in rows if x["colour_accepted_level"] == "family"]
    assert at_family and all(x["colour_family"] == "Blue" and not x["colour_accepted"] for x in at_family)
    assert all(x["colour_family"] is None for x in rows if x["colour"] not in ("blue", "teal"))
    items = {q["id"]: q for q in map(json.loads, queue.read_text().splitlines())}
    for x in at_family:
        fam = items[x["id"]]["attributes"]["colour"]["family"]
        assert fam["name"] == "Blue" and fam["accepted"]


def test_the_servers_estimate_is_the_scoring_runs(bundle, demo_catalog, start_server, tmp_path):
    from attrx.service.catalog.reader import read_catalog

    products = read_catalog(demo_catalog).products
    server = start_server(drift_window=len(products), workers=2)
    _answers(server, products)
    out = tmp_path / "scored.jsonl"
    r = subprocess.run([EXE, "score", str(demo_catalog), "--bundle", str(bundle), "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads(Path(str(out) + ".meta.json").read_text())["accuracy_estimate"]
    assert "ESTIMATE" in meta["note"] and "calibrat" in meta["note"]
    job = meta["attributes"]["colour"]
    assert job["all"]["products"] == len(products) and job["all"]["low"] <= job["all"]["estimate"] <= job["all"]["high"]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    # the estimate is the mean probability of the answered value (no constraint changes one here)
    assert abs(job["all"]["estimate"] - sum(x["colour_confidence"] for x in rows) / len(rows)) < 1e-3
    end, text = time.monotonic() + 20, ""
    while time.monotonic() < end:  # the engine publishes the window's estimate at most once a second
        text = httpx.get(server.url + "/metrics", timeout=10).text
        got = re.search(r'^attrx_estimated_accuracy_products\{attribute="colour",situation="all"\} (\S+)$', text, re.M)
        if got and float(got.group(1)) == len(products):
            break
        time.sleep(0.2)
    live = re.search(r'^attrx_estimated_accuracy\{attribute="colour",bound="estimate",situation="all"\} (\S+)$',
                     text, re.M)
    assert live, text[-2000:]
    assert abs(float(live.group(1)) - job["all"]["estimate"]) < 1e-3
    for sit, e in job.items():
        if sit != "all":
            m = re.search(rf'^attrx_estimated_accuracy\{{attribute="colour",bound="high",situation="{re.escape(sit)}"\}} (\S+)$',
                          text, re.M)
            assert m and abs(float(m.group(1)) - e["high"]) < 1e-3, sit

