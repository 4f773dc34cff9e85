"""benchmarks/quality.py end to end on the first fashion products: every model of the default plan
trains, every condition the plan keeps for it is evaluated (a condition `attrx eval` refuses would
fail the run, as one did for the image-only effnet model), and RESULTS.md is written. The figures of
so small a run mean nothing; the plan running is what is tested."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT.parent / "shared" / "data" / "fashion-products" / "catalog.csv"
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.skipif(not CATALOG.is_file(), reason=f"the fashion-products catalog is not at {CATALOG}")
def test_the_quality_plan_runs_end_to_end(tmp_path):
    import quality

    out, docs = tmp_path / "quality", tmp_path / "docs"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/quality.py"), "--catalog", str(CATALOG),
                        "--max-products", "600", "--config", "tiny", "--epochs", "0,1,0", "--batch-size", "32",
                        "--out", str(out), "--docs", str(docs)], capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((out / "results.json").read_text())
    plan = quality.DEFAULT_MODELS.split(",")
    assert list(summary["results"]) == plan
    for name in plan:
        ran = {c for c, v in summary["results"][name].items() if v is not None}
        assert ran == set(quality.CONDITIONS) - quality.skipped_conditions(name), name
    assert quality.skipped_conditions("image-only effnet") == {"c", "e"}
    assert quality.skipped_conditions("text-only") == {"d"}
    results = (docs / "RESULTS.md").read_text()
    assert results.startswith("#")
    # the trust section: this run's measurements, and the kept ones a single run cannot make
    for section in ("### How titles spell the values", "### Certified thresholds", "### Accuracy without labels",
                    "### The matcher, before and after", "### Families", "### Label findings",
                    "### Training without the suspect labels"):
        assert section in results, section
