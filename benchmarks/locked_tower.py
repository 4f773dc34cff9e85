"""A locked pretrained image tower, cold and warm, beside an unlocked one (prints JSON).

    python benchmarks/locked_tower.py --out build/bench-locked

On a subset of the fashion-products catalog (--n products, picked by id), `attrx train --config
small-effnet --inputs image` runs, in alternating repetitions (--reps), as:
- cold: --lock-image with a fresh --image-cache that already holds the decoded images but not the
  tower's outputs, so the run computes them once;
- warm: --lock-image with a cache that holds both (a re-run, e.g. another seed or recipe);
- unlocked (--unlocked): the tower fine-tunes with the rest, with per-epoch image augmentation (the
  path for GPUs), on the same catalog and epochs.
Reported per arm: wall time of the whole command (start-up, features, epochs, calibration), the
epochs' own seconds from the train log, and the final validation accuracy per attribute; ratios
cold/warm and unlocked/warm per repetition with their median and range. The accuracies show what
the trade (a fixed tower input: no augmentation reaches it) costs at this budget.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ATTRX = [sys.executable, "-m", "attrx"]
ATTRS = "gender,subCategory,articleType,baseColour"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOG = ROOT.parent / "shared" / "data" / "fashion-products" / "catalog.csv"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def subset(catalog: Path, n: int, out: Path) -> Path:
    """The first n products by id, image paths made absolute (the copy lives elsewhere)."""
    with open(catalog, newline="") as f:
        rows = list(csv.DictReader(f))
    rows = sorted(rows, key=lambda r: int(r["id"]) if r["id"].isdigit() else 0)[:n]
    for r in rows:
        if r.get("image"):
            r["image"] = str((catalog.parent / r["image"]).resolve())
    path = out / f"catalog-{n}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def train(cat: Path, out: Path, flags: list[str], epochs: str) -> dict:
    warm, e2e, tune = epochs.split(",")
    cmd = [*ATTRX, "train", str(cat), "--attributes", ATTRS, "--out", str(out), "--config",
           "small-effnet", "--inputs", "image", "--warmup-epochs", warm, "--e2e-epochs", e2e, "--tune-epochs", tune,
           "--batch-size", "64", "--threads", "2", "--quiet", *flags]
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"attrx train failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    epochs_log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    best = [e for e in epochs_log if e["best"]][-1]
    return {"wall_s": round(wall, 2), "epochs_s": round(sum(e["seconds"] for e in epochs_log), 2),
            "val_accuracy": best["val_accuracy"], "features_line": next(
                (ln for ln in proc.stdout.splitlines() if ln.startswith("locked image tower")), None)}


def cold_cache(primed: Path, dest: Path) -> Path:
    """A cache folder with the primed run's decoded images and none of the tower's outputs."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for f in primed.glob("images-*"):
        (dest / f.name).hardlink_to(f)
    return dest


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": [round(v, 3) for v in values]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", default="0,2,0", help="warm-up,end-to-end,tuning epochs of every run")
    ap.add_argument("--unlocked", action="store_true", help="also run the unlocked (fine-tuned) tower")
    ap.add_argument("--out", type=Path, default=Path("build/bench-locked"))
    a = ap.parse_args()
    if not a.catalog.is_file():
        raise SystemExit(f"benchmarks/locked_tower.py: no catalog at {a.catalog} (--catalog)")
    a.out.mkdir(parents=True, exist_ok=True)
    cat = subset(a.catalog, a.n, a.out)
    primed = a.out / "cache-warm"
    log("priming: decoded images and the tower's outputs...")
    train(cat, a.out / "ck", ["--lock-image", "--image-cache", str(primed)], a.epochs)
    arms = ["cold", "warm"] + (["unlocked"] if a.unlocked else [])
    runs: dict[str, list[dict]] = {k: [] for k in arms}
    for rep in range(a.reps):
        for arm in arms if rep % 2 == 0 else arms[::-1]:
            cache = {"cold": cold_cache(primed, a.out / "cache-cold"), "warm": primed}.get(arm, primed)
            flags = ["--image-cache", str(cache)] + (["--lock-image"] if arm != "unlocked" else [])
            runs[arm].append(train(cat, a.out / "ck", flags, a.epochs))
            log(f"rep {rep + 1} {arm}: {runs[arm][-1]['wall_s']:.1f}s")
    ratio = {f"{arm}/warm": summary([r["wall_s"] / w["wall_s"] for r, w in zip(runs[arm], runs["warm"], strict=True)])
             for arm in arms if arm != "warm"}
    print(json.dumps({"catalog": str(cat), "products": a.n, "epochs": a.epochs, "reps": a.reps,
                      "wall_s": {arm: summary([r["wall_s"] for r in rs]) for arm, rs in runs.items()},
                      "epochs_s": {arm: summary([r["epochs_s"] for r in rs]) for arm, rs in runs.items()},
                      "ratio_of_wall_time": ratio,
                      "val_accuracy_last_rep": {arm: rs[-1]["val_accuracy"] for arm, rs in runs.items()},
                      "features_line": {arm: rs[-1]["features_line"] for arm, rs in runs.items()}}, indent=1))


if __name__ == "__main__":
    main()
