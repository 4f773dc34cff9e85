"""attrx audit on real files with the tiny bundle: duplicate images that carry another label are
found with their evidence (exact bytes and a re-encoded copy), the findings go to the review queue
one line per product, and a bad request is a clear error."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

EXE = str(Path(sys.executable).parent / "attrx")


def _catalog(demo_catalog: Path, tmp_path: Path) -> tuple[Path, dict]:
    """The demo catalog's first 60 rows, plus: an exact copy of row 0's image under a new id with
    another colour, and a re-encoded (JPEG, quality 85) copy of row 1's with another colour."""
    rows = list(csv.DictReader(open(demo_catalog, newline="", encoding="utf-8")))[:60]
    base = demo_catalog.parent
    for r in rows:
        r["image"] = str(base / r["image"]) if r["image"] else ""
    colours = sorted({r["colour"] for r in rows})
    other = {r["id"]: next(c for c in colours if c != r["colour"]) for r in rows[:2]}
    exact = dict(rows[0], id="dup-exact", colour=other[rows[0]["id"]])
    with Image.open(rows[1]["image"]) as im:
        again = im.convert("RGB")
    buf = io.BytesIO()
    again.save(buf, "JPEG", quality=85)
    (tmp_path / "near.jpg").write_bytes(buf.getvalue())
    near = dict(rows[1], id="dup-near", colour=other[rows[1]["id"]], image=str(tmp_path / "near.jpg"))
    out = tmp_path / "catalog.csv"
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([*rows, exact, near])
    return out, {"exact": (rows[0]["id"], "dup-exact"), "near": (rows[1]["id"], "dup-near")}


def test_duplicates_with_another_label_are_findings_with_their_evidence(bundle, demo_catalog, tmp_path):
    from attrx.service.review.queue_reader import read_queue

    cat, pairs = _catalog(demo_catalog, tmp_path)
    out, queue = tmp_path / "findings.jsonl", tmp_path / "queue.jsonl"
    r = subprocess.run([EXE, "audit", str(cat), "--bundle", str(bundle), "--out", str(out), "--attributes", "colour",
                        "--max-p", "0.001", "--review-queue", str(queue)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["audited"] == 62 and summary["skipped"] == 0
    found = {f["id"]: f for f in map(json.loads, out.read_text().splitlines())}
    # an untrained model gives every label about 1/12: only the duplicates that disagree are findings
    assert set(found) == {*pairs["exact"], *pairs["near"]}
    for kind, (a, b) in pairs.items():
        fa, fb = found[a], found[b]
        assert fa["attribute"] == "colour" and fa["strength"] > 0.5  # p of the answer + 0.5 for the duplicate
        assert fa["suggested"] != fa["stored"]
        assert [d["id"] for d in fa["evidence"]["duplicates"]] == [b] and fa["evidence"]["duplicates"][0]["kind"] == kind
        assert fa["evidence"]["duplicates"][0]["label"] == fb["stored"] != fa["stored"]
        assert {"title_only", "image_only", "title_names"} <= set(fa["evidence"])
    strengths = [f["strength"] for f in map(json.loads, out.read_text().splitlines())]
    assert strengths == sorted(strengths, reverse=True)
    items = read_queue(queue)
    assert {q.id for q in items} == set(found)
    for q in items:
        att = q.attributes["colour"]
        assert att["review"] == "label_suspect" and att["stored"] == found[q.id]["stored"]


def test_audit_refuses_an_attribute_the_bundle_lacks(bundle, demo_catalog, tmp_path):
    r = subprocess.run([EXE, "audit", str(demo_catalog), "--bundle", str(bundle), "--out", str(tmp_path / "f.jsonl"),
                        "--attributes", "size"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "--attributes ['size']" in r.stderr and "colour" in r.stderr


def test_ray_finds_what_the_local_audit_finds(bundle, demo_catalog, tmp_path):
    """The per-product work on a real local Ray (2 CPUs, 2 actors): the same findings, byte for byte."""
    import pytest

    pytest.importorskip("ray.data", reason="Ray Data is the optional extra attrx[ray]")
    cat, pairs = _catalog(demo_catalog, tmp_path)
    base = [EXE, "audit", str(cat), "--bundle", str(bundle), "--attributes", "colour", "--max-p", "0.05",
            "--batch-size", "8"]
    local, ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    r = subprocess.run([*base, "--out", str(local)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([*base, "--out", str(ray), "--ray", "--ray-local-cpus", "2", "--ray-concurrency", "2"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["audited"] == 62 and summary["findings"] >= 4
    assert {*pairs["exact"], *pairs["near"]} <= {json.loads(x)["id"] for x in ray.read_text().splitlines()}
    assert ray.read_text() == local.read_text()
