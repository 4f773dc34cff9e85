"""Monitoring and container files: what can be checked without a Docker engine."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_prometheus_config_is_valid():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    r = subprocess.run([promtool, "check", "config", str(ROOT / "deploy/prometheus/prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_queries_only_metrics_the_server_exports(server):
    httpx.post(server.url + "/v1/extract", json={"title": "Nimbus Men Blue Cap"}, timeout=10)
    exported = set(re.findall(r"^# TYPE (\S+) ", httpx.get(server.url + "/metrics", timeout=10).text, re.M))
    dash = json.loads((ROOT / "deploy/grafana/dashboards/attrx.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\battrx_[a-z_]+", e)}
    assert len(dash["panels"]) >= 8 and used

    def family(name: str) -> str:
        for suffix in ("_bucket", "_sum", "_count", "_total", "_info"):
            if name.endswith(suffix) and name[: -len(suffix)] in exported:
                return name[: -len(suffix)]
        return name

    assert {family(m) for m in used} <= exported, sorted({family(m) for m in used} - exported)


def test_compose_mounts_files_that_exist():
    compose = (ROOT / "docker-compose.yml").read_text()
    paths = re.findall(r"\./(deploy/[^:\s]+):", compose)
    assert paths and all((ROOT / p).exists() for p in paths), paths
    docker = (ROOT / "Dockerfile").read_text()
    runtime_stage = docker.split("AS demo-builder")[0]
    installs = [ln for ln in runtime_stage.splitlines() if "pip install" in ln]
    assert installs and not any("torch" in ln or "[train" in ln for ln in installs)  # serving image: no torch
    assert "USER attrx" in docker and "/readyz" in docker


def test_kubernetes_manifest_matches_the_app():
    yaml = pytest.importorskip("yaml")
    from service.settings import ServeSettings

    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/attrx.yaml").read_text()))
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["ports"][0]["containerPort"] == 8000
    env = {e["name"]: e.get("value") for e in c["env"]}
    fields = {f"ATTRX_{n.upper()}" for n in ServeSettings.model_fields}
    assert set(env) <= fields, set(env) - fields
    assert pod["terminationGracePeriodSeconds"] > float(env["ATTRX_DRAIN_TIMEOUT_S"]) + 5
    svc = next(d for d in docs if d["kind"] == "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
