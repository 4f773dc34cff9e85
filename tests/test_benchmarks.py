"""Benchmark scripts: what can be checked without running them for real."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quality_benchmark_says_clearly_when_the_data_is_absent(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/quality.py"), "--catalog", str(tmp_path / "nope.csv"),
                        "--out", str(tmp_path / "q"), "--docs", str(tmp_path / "docs")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "no catalog at" in r.stderr and "fashion-products" in r.stderr
    assert not (tmp_path / "q").exists()


def test_quality_targets_are_checked_from_the_figures():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import quality

    def attrs(acc, w=0.5, rap=0.5):
        return {a: {"accuracy": acc, "macro_f1": acc, "mean_image_weight": w,
                    "recall_at_precision": {"0.90": {"macro_recall": rap, "classes_counted": 3,
                                                     "classes_unreachable": []}}} for a in quality.ATTRS}

    res = {
        "text-only": {"a": attrs(0.90), "b": attrs(0.5), "c": attrs(0.90), "d": None},
        "image-only": {"a": attrs(0.70), "b": attrs(0.70, rap=0.4), "c": None, "d": attrs(0.70)},
        "cma-clip": {"a": attrs(0.92, w=0.2), "b": attrs(0.75, w=0.8, rap=0.6), "c": attrs(0.88), "d": attrs(0.60)},
        "cma-clip --no-mwa": {"a": attrs(0.91), "b": attrs(0.70, rap=0.45), "c": attrs(0.8), "d": attrs(0.6)},
    }
    lines = quality.targets(res)
    assert lines[0].startswith("(a)") and "**met**" in lines[0]
    assert "**met**" in lines[1] and "rises from (a) 0.200 to (b) 0.800: **met**" in lines[2]
    assert "**met**" in lines[3] and "**not met**" in lines[4]  # (d): 0.10 below image-only
