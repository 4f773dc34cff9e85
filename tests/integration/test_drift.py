"""Drift telemetry on the real tiny bundle: the reference export records, one window across the
server's processes, the batch job's comparison, re-baselining, and the errors (issue "Know when
the catalog drifts")."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

EXE = str(Path(sys.executable).parent / "attrx")


def _products(catalog: Path) -> list:
    from attrx.service.catalog.reader import read_catalog

    return read_catalog(catalog).products


def _send(server, products) -> None:
    for i in range(0, len(products), 32):
        body = [{"title": p.title, **({"image_base64": base64.b64encode(p.image.read_bytes()).decode()}
                                      if p.image else {})} for p in products[i:i + 32]]
        r = httpx.post(server.url + "/v1/extract/batch", json=body, timeout=60)
        assert r.status_code == 200 and not [x for x in r.json()["results"] if "error" in x], r.text[:500]


def _drift(server, items: int, headers: dict | None = None) -> dict:
    """GET /v1/drift once the window holds `items` products (the engine folds batches in every 0.1 s)."""
    end = time.monotonic() + 20
    while True:
        d = httpx.get(server.url + "/v1/drift", headers=headers, timeout=10).json()
        if d["items"] >= items or time.monotonic() > end:
            return d
        time.sleep(0.05)


def _distances(cmp: dict) -> dict[str, float | None]:
    out = {f"{a}.{s}": d for a, e in cmp["attributes"].items() for s, d in e["distance"].items()}
    out.update(cmp["inputs"])
    return out


def test_the_bundle_carries_its_validation_splits_statistics(bundle, checkpoint, demo_catalog):
    from attrx.service.contract.bundle import load_bundle
    from attrx.service.contract.drift_stats import Statistics
    from attrx.training.data.encode import split_of

    m = load_bundle(bundle).manifest
    ref = m.drift_reference
    split = json.loads((checkpoint / "config.json").read_text()).get("split", {})
    val = [p for p in _products(demo_catalog) if split_of(p.id, **split) == "val"]
    assert ref["items"] == len(val) > 0 and "validation split" in ref["source"]
    counts = Statistics(m).check_reference(ref)
    assert counts.sum() == ref["items"] * len(ref["statistics"])  # one bin per product and statistic
    r = subprocess.run([EXE, "validate-bundle", str(bundle)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"drift reference: {ref['items']} products" in r.stdout, r.stdout + r.stderr


def test_validate_bundle_names_a_drift_reference_that_does_not_fit(bundle, tmp_path):
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(bundle, bad)
    raw = json.loads((bad / "manifest.json").read_text())
    raw["drift_reference"]["counts"] = raw["drift_reference"]["counts"][:-1]
    (bad / "manifest.json").write_text(json.dumps(raw))
    r = subprocess.run([EXE, "validate-bundle", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "drift_reference: the reference's counts must be" in r.stderr, r.stderr


def test_the_servers_window_and_the_batch_job_agree_on_the_same_products(bundle, demo_catalog, start_server,
                                                                         tmp_path):
    products = _products(demo_catalog)
    server = start_server(drift_window=len(products), workers=2)
    _send(server, products)
    live = _drift(server, len(products))
    assert live["items"] == len(products) and live["full"] and live["reference"]["source"] == "bundle"
    out = tmp_path / "scored.jsonl"
    r = subprocess.run([EXE, "score", str(demo_catalog), "--bundle", str(bundle), "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    job = json.loads(Path(str(out) + ".meta.json").read_text())["drift"]
    assert job["items"] == len(products) and not job["judged"]  # fewer than 1000 products: not judged
    a, b = _distances(live), _distances(job)
    assert a.keys() == b.keys() and all(v is not None for v in a.values())
    assert max(abs(a[k] - b[k]) for k in a) <= 0.01, {k: (a[k], b[k]) for k in a if abs(a[k] - b[k]) > 0.01}
    for attr, e in live["attributes"].items():
        assert abs(e["accepted_rate"] - job["attributes"][attr]["accepted_rate"]) <= 0.01
        assert e["situations"] == job["attributes"][attr]["situations"]
    # /metrics: the same figures, and every statistic's threshold
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for key, d in a.items():
        attr, _, stat = key.rpartition(".")
        name, labels = ("attrx_drift_distance", f'{{attribute="{attr}",statistic="{stat}"}}') if attr else \
            ("attrx_drift_input_distance", f'{{statistic="{stat}"}}')
        got = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
        assert got and abs(float(got.group(1)) - d) < 1e-6, (key, got)
    assert re.search(r'^attrx_drift_threshold\{attribute="colour",statistic="value"\} 0\.\d+$', text, re.M)
    assert re.search(r"^attrx_drift_window_items 240\.0$", text, re.M)


def test_the_window_is_not_judged_until_full(start_server, demo_catalog):
    server = start_server(drift_window=500)
    _send(server, _products(demo_catalog)[:10])
    d = _drift(server, 10)
    assert d["items"] == 10 and not d["full"] and d["exceeded"] == []
    text = httpx.get(server.url + "/metrics", timeout=10).text
    value = re.search(r'^attrx_drift_distance\{attribute="colour",statistic="value"\} (\S+)$', text, re.M)
    assert value and math.isnan(float(value.group(1)))  # no alert from a window of 10


def test_rebaselining_from_traffic_reaches_every_process_and_survives_a_restart(start_server, demo_catalog,
                                                                                tmp_path):
    ref = tmp_path / "reference.json"
    env = {"ATTRX_API_KEY": "s3cret-inference-key", "ATTRX_ADMIN_KEY": "s3cret-admin-key-0"}
    auth = {"Authorization": "Bearer s3cret-inference-key"}
    admin = {"Authorization": "Bearer s3cret-admin-key-0"}
    server = start_server(drift_window=20, drift_reference=str(ref), workers=2, env=env)
    titles = [f"{p.title} {i}" for i, p in enumerate(_products(demo_catalog)[:20])]  # 20 distinct products
    for i in range(0, 20, 10):
        body = [{"title": t} for t in titles[i:i + 10]]
        assert httpx.post(server.url + "/v1/extract/batch", json=body, headers=auth, timeout=60).status_code == 200
    assert httpx.post(server.url + "/v1/drift/baseline", timeout=10).status_code == 401
    inference = httpx.post(server.url + "/v1/drift/baseline", headers=auth, timeout=10)
    assert inference.status_code == 403 and inference.json()["reason"] == "admin_only"
    assert _drift(server, 20, auth)["items"] == 20
    r = httpx.post(server.url + "/v1/drift/baseline", headers=admin, timeout=10)
    assert r.status_code == 200 and r.json() == {"source": "traffic", "items": 20, "file": str(ref)}
    assert json.loads(ref.read_text())["items"] == 20
    for _ in range(4):  # every front-end answers from the new reference
        d = httpx.get(server.url + "/v1/drift", headers=auth, timeout=10).json()
        assert d["reference"] == {"source": "traffic", "items": 20}
        assert set(_distances(d).values()) == {0.0}
    server.stop()
    again = start_server(drift_window=20, drift_reference=str(ref), env=env)
    assert httpx.get(again.url + "/v1/drift", headers=auth, timeout=10).json()["reference"] == \
        {"source": "file", "items": 20}
    r = httpx.post(again.url + "/v1/drift/baseline", json={"source": "bundle"}, headers=admin, timeout=10)
    assert r.status_code == 200 and r.json()["source"] == "bundle" and not ref.exists()
    r = httpx.post(again.url + "/v1/drift/baseline", json={"source": "mine"}, headers=admin, timeout=10)
    assert r.status_code == 422


def test_an_empty_window_cannot_become_the_reference_and_drift_can_be_off(start_server):
    server = start_server(drift_window=50, env={"ATTRX_ADMIN_KEY": "s3cret-admin-key-0"})
    r = httpx.post(server.url + "/v1/drift/baseline", headers={"Authorization": "Bearer s3cret-admin-key-0"},
                   timeout=10)
    assert r.status_code == 409 and r.json()["reason"] == "empty_window"
    off = start_server(drift_window=0)
    r = httpx.get(off.url + "/v1/drift", timeout=10)
    assert r.status_code == 404 and r.json()["reason"] == "drift_off"
    assert "\nattrx_drift_distance{" not in httpx.get(off.url + "/metrics", timeout=10).text


@pytest.mark.parametrize("flag,body,message", [
    ("--drift-reference", {"version": 1, "statistics": [["value", "colour", 3]], "counts": [1, 2, 3], "items": 2},
     "drift reference .*other attributes or classes"),
    ("--drift-thresholds", {"colour.hue": 0.2}, "drift thresholds .*unknown statistics"),
])
def test_a_file_that_does_not_fit_stops_the_server_with_the_reason(bundle, tmp_path, flag, body, message):
    f = tmp_path / "file.json"
    f.write_text(json.dumps(body))
    r = subprocess.run([EXE, "serve", "--bundle", str(bundle), "--port", "0", flag, str(f)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and re.search(message, r.stdout + r.stderr), (r.stdout + r.stderr)[-2000:]


def test_the_batch_job_warns_when_a_threshold_is_crossed_and_resume_keeps_the_counts(bundle, demo_catalog,
                                                                                    tmp_path):
    th = tmp_path / "thresholds.json"
    th.write_text(json.dumps({"value": 0.001, "situation": 0.001}))
    out = tmp_path / "scored.jsonl"
    args = [EXE, "score", str(demo_catalog), "--bundle", str(bundle), "--out", str(out), "--quiet",
            "--drift-thresholds", str(th), "--drift-min-products", "50"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "WARNING: the catalog drifted" in r.stderr and ".value" in r.stderr, r.stderr
    meta = json.loads(Path(str(out) + ".meta.json").read_text())["drift"]
    assert meta["judged"] and meta["exceeded"] and meta["thresholds"]["colour.value"] == 0.001
    # a resumed run with nothing left to score keeps the counts the first run recorded
    r = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    again = json.loads(Path(str(out) + ".meta.json").read_text())["drift"]
    assert again["items"] == meta["items"] and again["counts"] == meta["counts"]
