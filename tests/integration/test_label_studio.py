"""The review queue through a real Label Studio and back.

Label Studio runs from a virtual environment of its own (build/venv-label-studio, made once from
PyPI: its pins are not attrx's), on 127.0.0.1 with a SQLite database in a temporary folder, serving the
demo catalog's images as local files. The test speaks its REST API as a team's script would:
create the project from attrx's labelling configuration, connect the images' folder, import attrx's
tasks, annotate, export as JSON; then `attrx review import` turns the export into decisions."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest
from helpers import free_port, wait_healthy

PACKAGES = ["label-studio==1.23.2", "sentry-sdk<3"]  # sentry-sdk 3 drops an option Label Studio 1.23 passes
TOOL = Path(__file__).resolve().parents[2] / "build" / "venv-label-studio"
TOKEN = "attrx0test0token0000000000000000000000"
EXE = str(Path(sys.executable).parent / "attrx")


def _tool() -> Path:
    stamp = TOOL / ".installed"
    if not stamp.exists() or stamp.read_text() != repr(PACKAGES):
        venv.create(TOOL, with_pip=True, clear=True)
        r = subprocess.run([str(TOOL / "bin" / "python"), "-m", "pip", "install", "-q", *PACKAGES],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            pytest.skip(f"Label Studio does not install here: {r.stderr[-500:]}")
        stamp.write_text(repr(PACKAGES))
    return TOOL / "bin" / "label-studio"


@pytest.fixture(scope="module")
def label_studio(demo_catalog, tmp_path_factory):
    exe = _tool()
    port = free_port()
    data = tmp_path_factory.mktemp("label-studio")
    env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(demo_catalog.parent), "SENTRY_DSN": "",
           "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"}
    log = open(data / "label-studio.log", "w+")
    proc = subprocess.Popen([str(exe), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
                             "--internal-host", "127.0.0.1", "--data-dir", str(data), "--username",
                             "reviewer@example.com", "--password", "attrx-test-pass", "--user-token", TOKEN,
                             "--enable-legacy-api-token"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url + "/health", proc, log, "Label Studio", timeout=300)
        yield httpx.Client(base_url=url, headers={"Authorization": f"Token {TOKEN}"}, timeout=60)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _queue(demo_catalog: Path, bundle: Path, tmp_path: Path) -> Path:
    """The demo catalog's first 20 products scored by the tiny bundle, their queue; images by absolute path."""
    rows = list(csv.DictReader(open(demo_catalog, newline="", encoding="utf-8")))[:20]
    for row in rows:
        row["image"] = str(demo_catalog.parent / row["image"]) if row["image"] else ""
    with open(tmp_path / "cat.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out, queue = tmp_path / "scored.jsonl", tmp_path / "queue.jsonl"
    r = subprocess.run([EXE, "score", str(tmp_path / "cat.csv"), "--bundle", str(bundle), "--out", str(out),
                        "--review-queue", str(queue), "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return queue


def test_the_queue_goes_to_label_studio_and_its_annotations_come_back(label_studio, demo_catalog, bundle,
                                                                     tmp_path):
    from attrx.service.review.queue_reader import read_queue
    from attrx.service.review.store import DecisionStore

    ls, queue = label_studio, _queue(demo_catalog, bundle, tmp_path)
    items = read_queue(queue)
    r = subprocess.run([EXE, "review", "export", str(queue), "--format", "label-studio", "--bundle", str(bundle),
                        "--out", str(tmp_path / "ls"), "--document-root", str(demo_catalog.parent)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["tasks"] == len(items) > 3
    project = ls.post("/api/projects", json={"title": "attrx review",
                                             "label_config": (tmp_path / "ls" / "label_config.xml").read_text()})
    assert project.status_code == 201, project.text  # Label Studio accepts the generated configuration
    pid = project.json()["id"]
    storage = ls.post("/api/storages/localfiles", json={"project": pid, "path": str(demo_catalog.parent / "images"),
                                                        "use_blob_urls": False, "title": "catalog images"})
    assert storage.status_code == 201, storage.text
    imported = ls.post(f"/api/projects/{pid}/import", json=json.loads((tmp_path / "ls" / "tasks.json").read_text()))
    assert imported.status_code == 201, imported.text
    assert imported.json()["task_count"] == imported.json()["prediction_count"] == len(items)
    tasks = ls.get("/api/tasks", params={"project": pid, "page_size": 100}).json()["tasks"]
    first = tasks[0]["data"]
    image = ls.get(first["image"].split("?")[0], params={"d": first["image"].split("?d=")[1]})
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")  # Label Studio shows it

    # a reviewer keeps attrx's answer on one product, corrects another, cancels a third
    model = {t["id"]: t["data"]["attrx"] for t in tasks}
    names = [a for t in tasks for a in t["data"]["attrx"]]
    attr = max(set(names), key=names.count)  # an attribute under review in at least three products
    keep, fix, skip = [t["id"] for t in tasks if attr in t["data"]["attrx"]][:3]
    classes = next(a.classes for a in _manifest(bundle).attributes if a.name == attr)
    other = next(c for c in classes if c != model[fix][attr]["value"])
    for task, value, cancelled in ((keep, model[keep][attr]["value"], False), (fix, other, False),
                                   (skip, other, True)):
        res = [{"from_name": attr, "to_name": "image", "type": "choices", "value": {"choices": [value]}}]
        a = ls.post(f"/api/tasks/{task}/annotations", json={"result": res, "was_cancelled": cancelled})
        assert a.status_code == 201, a.text
    export = ls.get(f"/api/projects/{pid}/export", params={"exportType": "JSON"})
    assert export.status_code == 200
    (tmp_path / "export.json").write_bytes(export.content)

    db = tmp_path / "decisions.db"
    run = [EXE, "review", "import", str(tmp_path / "export.json"), "--db", str(db)]
    r = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    counts = json.loads(r.stdout)
    assert counts["answered"] == 2 and counts["without_annotation"] == 1  # the export holds annotated tasks; one cancelled
    store = DecisionStore(db)
    got = {d["id"]: d for d in store.current()}
    ids = {t["id"]: t["data"]["attrx_id"] for t in tasks}
    kept, fixed = got[ids[keep]], got[ids[fix]]
    assert (kept["action"], kept["value"]) == ("accept", model[keep][attr]["value"])
    assert (fixed["action"], fixed["value"], fixed["model_value"]) == ("correct", other, model[fix][attr]["value"])
    assert fixed["reviewer"].startswith("label-studio:") and fixed["decided_at"].endswith("Z") and not fixed["verified"]
    assert ids[skip] not in got
    store.close()
    again = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert json.loads(again.stdout)["already"] == 2  # importing the same export twice adds nothing
    r = subprocess.run([EXE, "corrections", str(db), "--out", str(tmp_path / "corrections.csv")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and other in (tmp_path / "corrections.csv").read_text()  # what attrx improve reads


def _manifest(bundle: Path):
    from attrx.service.contract.bundle import load_bundle

    return load_bundle(bundle, verify_hashes=False).manifest
