"""`attrx score --review-queue`: every product with an attribute not accepted gets one queue line
with exactly those attributes, their candidates from the bundle's classes and a priority; a
product whose attributes were all accepted gets none (issue 23, first part)."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import ATTRS

from attrx.cli import main


def test_the_queue_holds_exactly_the_attributes_not_accepted(bundle, demo_catalog, tmp_path):
    out, queue = tmp_path / "scored.csv", tmp_path / "queue.jsonl"
    main(["score", str(demo_catalog), "--bundle", str(bundle), "--out", str(out), "--review-queue", str(queue),
          "--quiet"])
    rows = {r["id"]: r for r in csv.DictReader(open(out))}
    lines = [json.loads(x) for x in queue.read_text().splitlines()]
    by_id = {q["id"]: q for q in lines}
    assert len(by_id) == len(lines)  # one line per product
    pending = {pid for pid, r in rows.items() if any(r[f"{a}_accepted"] == "False" for a in ATTRS)}
    assert set(by_id) == pending and 0 < len(pending) < len(rows)  # the untrained bundle accepts some values
    catalog = {r["id"]: r for r in csv.DictReader(open(demo_catalog))}
    classes = {a["name"]: set(a["classes"]) for a in json.loads((bundle / "manifest.json").read_text())["attributes"]}
    for pid, q in by_id.items():
        r = rows[pid]
        assert q["format"] == 1 and q["title"] == (catalog[pid]["title"] or None)
        assert (q["image"] is None) == (not catalog[pid]["image"])
        assert set(q["attributes"]) == {a for a in ATTRS if r[f"{a}_accepted"] == "False"}
        assert q["accepted"] == {a: r[a] for a in ATTRS if r[f"{a}_accepted"] == "True"}
        expected = sum(1 - float(r[f"{a}_confidence"]) for a in q["attributes"])
        assert q["priority"] == pytest.approx(expected, abs=1e-5)
        for a, v in q["attributes"].items():
            assert v["value"] == r[a] and v["review"] == r[f"{a}_review"] and v["situation"] == r[f"{a}_situation"]
            probs = [c["probability"] for c in v["candidates"]]
            assert len(probs) <= 3 and probs == sorted(probs, reverse=True)
            assert all(c["value"] in classes[a] and c["value"] != v["value"] for c in v["candidates"])
