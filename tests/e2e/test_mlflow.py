"""attrx and a real MLflow tracking server on 127.0.0.1 (SQLite backend, local artifact store): train,
eval and improve runs with their parameters, per-epoch metrics and files; export --register as a
model version with its thresholds and gates as tags; attrx serve from models:/NAME/VERSION and from
an alias.

The server runs from a virtual environment of its own (build/venv-mlflow, made once from PyPI: the
full mlflow's pins are not attrx's); attrx talks to it through its `mlflow` extra (mlflow-skinny)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

import httpx
import pytest
from helpers import free_port, wait_healthy

mlflow = pytest.importorskip("mlflow", reason="the client side is the optional extra attrx[mlflow]")

SERVER = "mlflow==3.17.2"  # 3.18.0's server needs an mlflow-tracing 3.18.0 the index does not have yet
TOOL = Path(__file__).resolve().parents[2] / "build" / "venv-mlflow"
EXE = str(Path(sys.executable).parent / "attrx")
ATTRS = "category,colour"


def _tool() -> Path:
    stamp = TOOL / ".installed"
    if not stamp.exists() or stamp.read_text() != SERVER:
        venv.create(TOOL, with_pip=True, clear=True)
        r = subprocess.run([str(TOOL / "bin" / "python"), "-m", "pip", "install", "-q", SERVER],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            pytest.skip(f"the MLflow server does not install here: {r.stderr[-500:]}")
        stamp.write_text(SERVER)
    return TOOL / "bin" / "mlflow"


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    exe = _tool()
    port = free_port()
    data = tmp_path_factory.mktemp("mlflow")
    log = open(data / "server.log", "w+")
    proc = subprocess.Popen([str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{data / 'mlflow.db'}",
                             "--artifacts-destination", str(data / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=data)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url + "/health", proc, log, "the MLflow server")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _run(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    r = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-3000:]
    return r


def _runs(client, command: str):
    exp = client.get_experiment_by_name("attrx")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`attrx.command` = '{command}'")


def test_train_eval_improve_export_and_serve_through_mlflow(tracking, demo_catalog, tmp_path):
    # no mlflow.set_tracking_uri here: it also sets MLFLOW_TRACKING_URI for the rest of the session, and
    # later tests that train in this process would then log to a server that is gone
    client = mlflow.MlflowClient(tracking_uri=tracking)
    ck = tmp_path / "ck"
    _run("train", str(demo_catalog), "--attributes", ATTRS, "--out", str(ck), "--config", "tiny",
         "--warmup-epochs", "1", "--e2e-epochs", "2", "--tune-epochs", "0", "--threads", "2", "--quiet",
         "--mlflow-uri", tracking)
    (train,) = _runs(client, "train")
    assert train.data.params["config"] == "tiny" and train.data.params["attributes"] == '["category", "colour"]'
    history = client.get_metric_history(train.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3]  # one point per epoch, across the stages
    assert len(client.get_metric_history(train.info.run_id, "val_accuracy.colour")) == 3
    files = {f.path for f in client.list_artifacts(train.info.run_id, "checkpoint")}
    assert {"checkpoint/train_log.jsonl", "checkpoint/config.json"} <= files

    _run("eval", str(demo_catalog), "--checkpoint", str(ck), "--quiet", "--min-positives", "1",
         env={"MLFLOW_TRACKING_URI": tracking})  # the environment variable, as a platform sets it
    (ev,) = _runs(client, "eval")
    assert ev.data.tags["mlflow.parentRunId"] == train.info.run_id
    assert 0 <= ev.data.metrics["colour.accuracy"] <= 1 and "colour.coverage_at_0.90" in ev.data.metrics
    table = Path(client.download_artifacts(ev.info.run_id, "situations.csv", str(tmp_path))).read_text()
    rows = list(csv.DictReader(table.splitlines()))
    assert rows and {r["attribute"] for r in rows} == {"category", "colour"} and all("coverage" in r for r in rows)
    assert any(f.path.endswith(".png") for f in client.list_artifacts(ev.info.run_id, "evaluation"))

    bundle = tmp_path / "bundle"
    out = _run("export", "--checkpoint", str(ck), "--out", str(bundle), "--register", "attrx-demo", "--quiet",
               "--mlflow-uri", tracking).stdout
    assert "registered as models:/attrx-demo/1" in out
    v = client.get_model_version("attrx-demo", "1")
    assert v.tags["attrx.family"] == "cma-clip" and json.loads(v.tags["attrx.precision_targets"]) == [0.9, 0.95]
    assert "attrx.thresholds.colour.0.90" in v.tags and "max_abs_diff" in v.tags["attrx.parity.fp32"]
    (ex,) = _runs(client, "export")
    assert ex.data.tags["mlflow.parentRunId"] == train.info.run_id

    client.set_registered_model_alias("attrx-demo", "champion", "1")
    name = json.loads((bundle / "manifest.json").read_text())["name"]
    for uri in ("models:/attrx-demo/1", "models:/attrx-demo@champion"):
        _serve_and_ask(uri, tracking, tmp_path / "cache", name)
    assert (tmp_path / "cache" / "attrx-demo" / "1" / "manifest.json").is_file()  # downloaded once, cached


def _serve_and_ask(uri: str, tracking: str, cache: Path, name: str) -> None:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "ATTRX_MODEL_CACHE": str(cache)}
    proc = subprocess.Popen([EXE, "serve", "--bundle", uri, "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        info = httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=10).json()
        assert info["name"] == name
        r = httpx.post(f"http://127.0.0.1:{port}/v1/extract", json={"title": "red cotton shirt"}, timeout=20)
        assert r.status_code == 200 and "colour" in r.json()["predictions"]
    finally:
        proc.terminate()
        proc.wait(60)


def test_improve_logs_its_settings_and_epochs(tracking, trained_checkpoint, demo_catalog, tmp_path):
    from attrx.service.review.store import Answer, DecisionStore

    rows = list(csv.DictReader(open(demo_catalog)))[:12]
    store = DecisionStore(tmp_path / "decisions.sqlite")
    for r in rows:
        store.record(r["id"], "alice", [Answer("colour", "correct", "red", r["colour"], 0.4)], r["title"], None)
    store.close()
    out = tmp_path / "improved"
    _run("improve", str(demo_catalog), "--checkpoint", str(trained_checkpoint), "--corrections",
         str(tmp_path / "decisions.sqlite"), "--out", str(out), "--epochs", "1", "--no-eval", "--threads", "2",
         "--quiet", "--mlflow-uri", tracking)
    client = mlflow.MlflowClient(tracking_uri=tracking)
    (run,) = _runs(client, "improve")
    assert run.data.params["epochs"] == "1" and run.data.params["trusted_weight"] == "2.0"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 1
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == run.info.run_id
