"""A real Prometheus on loopback scrapes a running attrx and answers queries on its metrics."""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import time

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(base: str, q: str) -> list:
    r = httpx.get(base + "/api/v1/query", params={"query": q}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def test_a_real_prometheus_scrapes_the_server(server, tmp_path):
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus not installed (Debian package 'prometheus'; .ci/run installs it)")
    port = _free_port()
    target = server.url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: attrx\n    static_configs: [{{targets: ['{target}']}}]\n")
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen([exe, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        rate, p90, up = [], [], []
        end = time.monotonic() + 60
        while time.monotonic() < end and not (rate and p90 and up):
            for i in range(5):  # traffic while it scrapes
                httpx.post(server.url + "/v1/extract", json={"title": f"Roadster Men Blue Tee {i}"}, timeout=10)
            time.sleep(0.5)
            try:
                up = [x for x in _query(base, 'up{job="attrx"}') if x["value"][1] == "1"]
                rate = _query(base, 'sum(rate(attrx_requests_total{endpoint="/v1/extract",code="200"}[10s])) > 0')
                p90 = _query(base, "histogram_quantile(0.9, sum by (le) "
                                   '(rate(attrx_request_duration_seconds_bucket{endpoint="/v1/extract"}[10s])))')
                p90 = [x for x in p90 if math.isfinite(float(x["value"][1]))]
            except httpx.TransportError:
                continue  # Prometheus still starting
        log.flush()
        assert up, "Prometheus never scraped attrx: " + (tmp_path / "prometheus.log").read_text()[-2000:]
        assert float(rate[0]["value"][1]) > 0
        assert 0 < float(p90[0]["value"][1]) < 10
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_drift_alerts_and_panels_work_on_a_real_prometheus(start_server, demo_catalog, tmp_path):
    """alerts.yml loaded into a real Prometheus scraping a real server whose drift distances cross
    their thresholds (a thresholds file of 0.001: any window differs that much from the reference):
    every drift alert goes pending, and every drift query of the dashboard returns series."""
    import base64
    import json
    from pathlib import Path

    from attrx.service.catalog.reader import read_catalog

    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus not installed (Debian package 'prometheus'; .ci/run installs it)")
    root = Path(__file__).resolve().parents[2]
    th = tmp_path / "thresholds.json"
    th.write_text(json.dumps({s: 0.001 for s in ("value", "confidence", "image_weight", "situation", "accepted",
                                                   "title_length", "image_size", "image_contrast")}))
    server = start_server(drift_window=30, drift_thresholds=str(th))
    products = read_catalog(demo_catalog).products[:30]
    body = [{"title": p.title, **({"image_base64": base64.b64encode(p.image.read_bytes()).decode()} if p.image
                                  else {})} for p in products]
    assert httpx.post(server.url + "/v1/extract/batch", json=body[:15], timeout=60).status_code == 200
    assert httpx.post(server.url + "/v1/extract/batch", json=body[15:], timeout=60).status_code == 200
    port = _free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{root / 'deploy/prometheus/alerts.yml'}']\n"
        f"scrape_configs:\n  - job_name: attrx\n    static_configs: [{{targets: ['{server.url.removeprefix('http://')}']}}]\n")
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen([exe, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wanted = {"AttrxDriftInputs", "AttrxDriftTitles", "AttrxDriftProductMix", "AttrxDriftConfidence"}
    dash = json.loads((root / "deploy/grafana/dashboards/attrx.json").read_text())
    queries = [t["expr"].replace("$attribute", "colour") for p in dash["panels"] for t in p["targets"]
               if "attrx_drift" in t["expr"]]
    try:
        alerts: set = set()
        end = time.monotonic() + 60
        while time.monotonic() < end and alerts != wanted:
            time.sleep(1)
            try:
                alerts = {x["metric"]["alertname"] for x in _query(base, 'ALERTS{alertname=~"AttrxDrift.*"}')}
            except httpx.TransportError:
                continue
        log.flush()
        assert alerts == wanted, (alerts, (tmp_path / "prometheus.log").read_text()[-2000:])
        assert len(queries) >= 6
        for q in queries:
            assert _query(base, q), q
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
