"""benchmarks/review.py end to end on the first 500 fashion products (the simulated reviewer, every
order, one short round): it runs, and its summary holds the figures the targets are read from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT.parent / "shared" / "data" / "fashion-products" / "catalog.csv"


@pytest.mark.skipif(not CATALOG.is_file(), reason=f"the fashion-products catalog is not at {CATALOG}")
def test_the_simulated_reviewer_runs_every_order(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/review.py"), "--catalog", str(CATALOG),
                        "--out", str(tmp_path), "--seeds", "1", "--rounds", "1", "--per-round", "20",
                        "--max-products", "500", "--epochs", "1", "--fine-tune-epochs", "1"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    orders = doc["seeds"][0]["orders"]
    assert set(orders) == {"priority", "lowest-confidence", "random", "control"}
    for name, rounds in orders.items():
        assert [x["round"] for x in rounds] == [0, 1]
        assert rounds[0]["coverage"] == orders["control"][0]["coverage"]  # every order starts from one model
        spent = rounds[1]["products_reviewed"]
        assert spent == (0 if name == "control" else 20)
    assert set(doc["summary"]["targets"]) == {"priority_gain_vs_control>=0.02", "priority_gain>=1.3x_random",
                                              "precision>=0.88", "beats_lowest_confidence"}
    assert json.loads(r.stdout)["summary"] == doc["summary"]
