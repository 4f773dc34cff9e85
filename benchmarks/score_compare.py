"""`attrx score` items/s of two or more bundles on one catalog, alternating, with repetitions (prints JSON).

    python benchmarks/score_compare.py --catalog build/quality/test-split.csv \
        --bundles today=build/quality/cma_clip-bundle,effnet=build/quality-effnet/cma_clip-bundle --reps 3

Each repetition scores the catalog once with every bundle, in a rotating order; items/s is the
catalog's products over the wall time of the whole `attrx score` run (start-up included). The ratio
of each bundle to the first is given per repetition, with its median and range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ATTRX = [sys.executable, "-m", "attrx"]


def score_once(catalog: Path, bundle: Path, precision: str, out_dir: Path) -> float:
    out = out_dir / f"{bundle.name}-{time.monotonic_ns()}.jsonl"
    t0 = time.perf_counter()
    subprocess.run([*ATTRX, "score", str(catalog), "--bundle", str(bundle), "--out", str(out), "--quiet",
                    "--variant", precision], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    n = sum(1 for _ in open(out, encoding="utf-8"))
    return n / wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--bundles", required=True, help="name=path,name=path (the first is the reference)")
    ap.add_argument("--variant", dest="precision", default="fp32")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    bundles = dict(x.split("=", 1) for x in a.bundles.split(","))
    names = list(bundles)
    rates: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for n in order:
                rates[n].append(round(score_once(Path(a.catalog), Path(bundles[n]), a.precision, Path(tmp)), 1))
                print(f"rep {rep} {n}: {rates[n][-1]} items/s", file=sys.stderr, flush=True)
    ref = names[0]
    ratios = {n: [round(x / y, 3) for x, y in zip(rates[n], rates[ref], strict=True)] for n in names[1:]}
    doc = {"catalog": a.catalog, "precision": a.precision, "items_per_s": rates,
           "median_items_per_s": {n: statistics.median(v) for n, v in rates.items()},
           "ratio_to_" + ref: {n: {"median": statistics.median(v), "min": min(v), "max": max(v), "per_rep": v}
                               for n, v in ratios.items()}}
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
