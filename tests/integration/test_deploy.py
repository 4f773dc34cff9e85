"""Monitoring and container files: what can be checked without a Docker engine."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("what,path", [("config", "deploy/prometheus/prometheus.yml"),
                                       ("rules", "deploy/prometheus/alerts.yml")])
def test_prometheus_files_are_valid(what, path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    r = subprocess.run([promtool, "check", what, str(ROOT / path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout + r.stderr, r.stdout + r.stderr
    if what == "config":  # the config loads the alert rules
        assert "1 rule files found" in r.stdout + r.stderr, r.stdout + r.stderr


def _queries() -> dict[str, list[str]]:
    """Every PromQL expression the deploy files hold: dashboard, alerts, the autoscaler's query."""
    import yaml

    dash = json.loads((ROOT / "deploy/grafana/dashboards/attrx.json").read_text())
    alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    scaler = yaml.safe_load((ROOT / "deploy/kubernetes/base/scaledobject.yaml").read_text())
    return {"dashboard": [t["expr"] for p in dash["panels"] for t in p["targets"]],
            "alerts": [r["expr"] for g in alerts["groups"] for r in g["rules"]],
            "scaler": [t["metadata"]["query"] for t in scaler["spec"]["triggers"]]}


@pytest.mark.parametrize("source", ["dashboard", "alerts", "scaler"])
def test_queries_name_only_metrics_the_server_exports(server, source):
    httpx.post(server.url + "/v1/extract", json={"title": "Nimbus Men Blue Cap"}, timeout=10)
    exported = set(re.findall(r"^# TYPE (\S+) ", httpx.get(server.url + "/metrics", timeout=10).text, re.M))
    exprs = _queries()[source]
    used = {m for e in exprs for m in re.findall(r"\battrx_[a-z_]+", e)}
    assert exprs and all(re.search(r"\battrx_", e) for e in exprs), exprs
    assert source != "dashboard" or len(exprs) >= 8
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for e in exprs:  # the endpoint and reason values selected on are ones the server uses
        for label, op, values in re.findall(r'\b(endpoint|reason)(=~?)"([^"]+)"', e):
            seen = set(re.findall(label + r'="([^"]*)"', text)) | set(_declared(label))
            for v in values.split("|") if op == "=~" else [values]:
                pattern = v if op == "=~" else re.escape(v)
                assert any(re.fullmatch(pattern, x) for x in seen), (e, label, v, sorted(seen))

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
    runtime_stage = docker.split("AS serve-demo")[0]
    installs = [ln for ln in runtime_stage.splitlines() if "pip install" in ln]
    assert installs and not any("torch" in ln or "[train" in ln for ln in installs)  # serving image: no torch
    assert "USER 10001" in docker and "/readyz" in docker


def test_compose_publishes_on_loopback_and_grafana_asks_for_a_login():
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    ports = [p for svc in services.values() for p in svc.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports), ports
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and "GF_AUTH_ANONYMOUS_ORG_ROLE" not in grafana
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")  # from the user, required
    attrx = services["attrx"]
    assert attrx["environment"]["ATTRX_API_KEY"].startswith("${ATTRX_API_KEY:?") and attrx["read_only"] is True


def _declared(label: str) -> tuple[str, ...]:
    """Label values the server declares before their first use (every rejection reason)."""
    from attrx.service.telemetry.prometheus import REJECTION_REASONS

    return REJECTION_REASONS if label == "reason" else ()


def test_the_kubernetes_probes_are_the_progress_endpoints_with_their_bounds(server):
    import yaml

    from attrx.service.settings import ServeSettings

    deploy = yaml.safe_load((ROOT / "deploy/kubernetes/base/deployment.yaml").read_text())
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == c["startupProbe"]["httpGet"]["path"] == "/livez"
    d = ServeSettings.model_fields
    # readiness acts within a few seconds of the stall bound; liveness only well past attrx's own
    # replacement of a stalled engine (at liveness_timeout_s)
    ready = c["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] <= d["stall_timeout_s"].default
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 2 * d["liveness_timeout_s"].default
    for path in ("/readyz", "/livez"):
        assert httpx.get(server.url + path, timeout=5).status_code == 200
