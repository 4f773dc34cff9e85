"""Drift benchmark: replays real products through a running server and measures how many requests
it takes until the drift alert condition holds, for shifted streams of several strengths, and how
often it holds on an unshifted one (issue "Know when the catalog drifts").

    python benchmarks/drift.py --catalog ../shared/data/fashion-products/catalog.csv --out build/drift

The model: a small CMA-CLIP trained on the catalog with 30% of the products held back from
training (`--test-frac 0.3`: the split by id hash), trained and exported into OUT unless they are
there already (~8 min). Its bundle's drift reference is the validation split (10%).

The streams, all from the held-back products in id order (products were catalogued in batches,
so id order is a realistic stream), all through `POST /v1/extract/batch` (25 products per call;
the window counts products, which this script calls requests):
  A  the first half: the alert thresholds are chosen on it (per statistic: the largest distance
     seen over any attribute once the window is full, times --margin, at least --floor)
  B  the second half, right after A: false alarms are counted on it (a check every 25 requests)
  shifted: B again, from its start, cycled, after the window has been refilled with unshifted
     products; each shift at 10%, 20%, 30% of the stream (a seeded draw per request) and at 100%:
       colour_words_removed  titles without the bundle's baseColour label words
       one_master_category   products of one masterCategory only (--master-category; default the
                             most common, the hardest to tell from the reference)
       blank_images          images replaced by a blank white JPEG of the same size
       tiny_images           images shrunk to 12 x 16 pixels
       titles_missing        no title, the image only
     Reported: requests from the shift's start until the alert condition holds (None: not within
     --max-requests), and which statistics crossed their thresholds first.
Then the batch job: the first `window` products of B scored by `attrx score`, and replayed into a
fresh server whose window then holds exactly them: the largest difference between the two
comparisons' distances.

Prints JSON (also written to OUT/drift.json).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attrx.service.contract.drift_stats import keyed_distances  # noqa: E402
from benchmarks.overload import start_server  # noqa: E402
from benchmarks.serve import log, stop_group  # noqa: E402

ATTRS = "gender,masterCategory,subCategory,articleType,baseColour,season,usage"
TRAIN_FLAGS = ["--config", "small", "--warmup-epochs", "1", "--e2e-epochs", "12", "--e2e-lr", "2e-3",
               "--tune-epochs", "1", "--batch-size", "64", "--min-class-count", "10", "--threads", "2",
               "--test-frac", "0.3", "--quiet"]
SHIFTS = ("colour_words_removed", "one_master_category", "blank_images", "tiny_images", "titles_missing")
CHUNK = 25


def ensure_bundle(catalog: Path, out: Path) -> tuple[Path, dict]:
    exe = str(Path(sys.executable).parent / "attrx")
    ck, bundle = out / "checkpoint", out / "bundle"
    if not (ck / "calibration.json").is_file():
        log(f"training {ck} (~8 min)...")
        subprocess.run([exe, "train", str(catalog), "--attributes", ATTRS, "--out", str(ck),
                        *TRAIN_FLAGS], check=True)
    if not (bundle / "manifest.json").is_file():
        subprocess.run([exe, "export", "--checkpoint", str(ck), "--out", str(bundle)], check=True)
    return bundle, json.loads((ck / "config.json").read_text())["split"]


def held_back(catalog: Path, split: dict) -> list:
    from attrx.service.catalog.reader import read_catalog
    from attrx.training.data.encode import split_of

    prods = [p for p in read_catalog(catalog, ATTRS.split(",")).products if split_of(p.id, **split) == "test"]
    return sorted(prods, key=lambda p: (len(p.id), p.id))  # numeric ids in numeric order


# -- shifts -------------------------------------------------------------------------------------------
def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class Shifter:
    def __init__(self, bundle: Path, products: list, master: str | None):
        from attrx.service.contract.bundle import load_bundle
        from attrx.service.contract.situations import label_pattern

        m = load_bundle(bundle, verify_hashes=False).manifest
        colour = next(a for a in m.attributes if a.name == "baseColour")
        self.colour = label_pattern(colour.label_words or colour.classes)
        counts: dict[str, int] = {}
        for p in products:
            counts[p.labels["masterCategory"]] = counts.get(p.labels["masterCategory"], 0) + 1
        self.master = master or max(counts, key=counts.get)
        self.of_master = [p for p in products if p.labels["masterCategory"] == self.master]

    def apply(self, shift: str, p, k: int) -> tuple[str | None, bytes | None]:
        from PIL import Image

        from attrx.service.contract.situations import strip_pattern

        image = p.image.read_bytes() if p.image else None
        if shift == "colour_words_removed":
            return strip_pattern(p.title, self.colour), image
        if shift == "one_master_category":
            q = self.of_master[k % len(self.of_master)]
            return q.title, q.image.read_bytes() if q.image else None
        if shift == "titles_missing":
            return (None, image) if image else (p.title, None)
        if image is None:
            return p.title, None
        img = Image.open(io.BytesIO(image)).convert("RGB")
        if shift == "blank_images":
            return p.title, _jpeg(Image.new("RGB", img.size, (255, 255, 255)))
        return p.title, _jpeg(img.resize((12, 16)))  # tiny_images


# -- the replay ---------------------------------------------------------------------------------------
class Replay:
    def __init__(self, url: str):
        import httpx

        self.client = httpx.Client(base_url=url, timeout=60)
        self.sent = 0

    def send(self, items: list[tuple[str | None, bytes | None]]) -> None:
        body = [{"title": t, **({"image_base64": base64.b64encode(im).decode()} if im else {})} for t, im in items]
        r = self.client.post("/v1/extract/batch", json=body)
        r.raise_for_status()
        bad = [x for x in r.json()["results"] if "error" in x]
        if bad:
            raise RuntimeError(f"products refused: {bad[:3]}")
        self.sent += len(items)

    def drift(self) -> dict:
        return self.client.get("/v1/drift").json()

    def settled(self) -> dict:
        """/v1/drift once the engine has folded everything sent (its window stops changing)."""
        last = self.drift()
        while True:
            time.sleep(0.3)
            now = self.drift()
            if now["items"] == last["items"] and now == last:
                return now
            last = now


def over(cmp: dict, thresholds: dict[str, float]) -> list[str]:
    if cmp["items"] < cmp["window"]:
        return []
    return [k for k, d in keyed_distances(cmp).items() if d > thresholds[k]]


def stream(rep: Replay, items: list, on_check) -> None:
    """Send items in chunks; on_check(sent so far, comparison) after each; stops when it returns True."""
    for i in range(0, len(items), CHUNK):
        rep.send(items[i:i + CHUNK])
        if on_check(i + len(items[i:i + CHUNK]), rep.drift()):
            return


def plain(products: list) -> list:
    return [(p.title, p.image.read_bytes() if p.image else None) for p in products]


def _up(x: float, margin: float, floor: float) -> float:
    return max(floor, math.ceil(margin * x * 100) / 100)


def choose_thresholds(rep: Replay, a: list, margin: float, floor: float) -> tuple[dict, dict]:
    """Two sets from stream A: 'kind' (one per statistic: what attrx ships) and 'fitted' (one per
    attribute and statistic: what a team can fit on its own products)."""
    seen: dict[str, float] = {}

    def check(n, cmp):
        if cmp["items"] >= cmp["window"]:
            for k, d in keyed_distances(cmp).items():
                seen[k] = max(seen.get(k, 0.0), d)

    stream(rep, plain(a), check)
    by_kind: dict[str, float] = {}
    for k, d in seen.items():
        kind = k.rsplit(".", 1)[-1]
        by_kind[kind] = max(by_kind.get(kind, 0.0), d)
    kind = {s: _up(d, margin, floor) for s, d in by_kind.items()}
    fitted = {k: _up(d, margin, floor) for k, d in seen.items()}
    return {"kind": {k: kind[k.rsplit(".", 1)[-1]] for k in seen}, "fitted": fitted, "per_kind": kind}, seen


def false_alarms(rep: Replay, b: list, sets: dict) -> dict:
    res = {name: {"false_alarms": 0, "first": None} for name in sets}
    checks = 0

    def check(n, cmp):
        nonlocal checks
        if cmp["items"] >= cmp["window"]:
            checks += 1
            for name, th in sets.items():
                hits = over(cmp, th)
                if hits:
                    res[name]["false_alarms"] += 1
                    res[name]["first"] = res[name]["first"] or {"at": n, "over": hits[:8]}

    stream(rep, plain(b), check)
    return {"requests": len(b), "checks": checks, **res}


def shifted(rep: Replay, shifter: Shifter, b: list, shift: str, frac: float, sets: dict, window: int,
            limit: int, seed: int) -> dict:
    rng = random.Random(f"{seed}-{shift}-{frac}")
    refill = plain([b[(i + 7919) % len(b)] for i in range(window)])  # unshifted, another stretch of B
    before: dict = {}
    stream(rep, refill, lambda n, cmp: before.update({k: over(cmp, th) for k, th in sets.items()}) and False)
    items = [shifter.apply(shift, b[k % len(b)], k) if rng.random() < frac else plain([b[k % len(b)]])[0]
             for k in range(limit)]
    found = {name: {"requests": None, "over": None} for name in sets}

    def check(n, cmp):
        for name, th in sets.items():
            hits = over(cmp, th)
            if hits and found[name]["requests"] is None:
                found[name] = {"requests": n, "over": hits[:8]}
        return all(f["requests"] is not None for f in found.values())

    stream(rep, items, check)
    return {"shift": shift, "fraction": frac, "alert_at_switch": before, **found}


def batch_job_agreement(bundle: Path, products: list, window: int, out: Path) -> dict:
    """The same products through `attrx score` and into a fresh server's window: their distances."""
    import csv

    cat = out / "agreement.csv"
    with open(cat, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "image"])
        for p in products:
            w.writerow([p.id, p.title or "", str(p.image) if p.image else ""])
    scored = out / "agreement-scored.jsonl"
    exe = str(Path(sys.executable).parent / "attrx")
    subprocess.run([exe, "score", str(cat), "--bundle", str(bundle), "--out", str(scored), "--overwrite", "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    job = json.loads(scored.with_name(scored.name + ".meta.json").read_text())["drift"]
    proc, port = start_server(str(bundle), ["--drift-window", str(window)])
    try:
        rep = Replay(f"http://127.0.0.1:{port}")
        stream(rep, plain(products), lambda n, cmp: False)
        live = rep.settled()
    finally:
        stop_group(proc)
    pairs = [(job["attributes"][a]["distance"][s], e["distance"][s]) for a, e in live["attributes"].items()
             for s in e["distance"]] + [(job["inputs"][s], d) for s, d in live["inputs"].items()]
    diffs = [abs(x - y) for x, y in pairs if x is not None and y is not None]
    return {"products": len(products), "server_items": live["items"], "batch_items": job["items"],
            "distances": len(diffs), "max_abs_diff": round(max(diffs), 6) if diffs else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", type=Path, default=ROOT.parent / "shared/data/fashion-products/catalog.csv")
    ap.add_argument("--out", type=Path, default=ROOT / "build/drift")
    ap.add_argument("--window", type=int, default=1000, help="the server's --drift-window (default: its default)")
    ap.add_argument("--margin", type=float, default=1.5, help="threshold = margin x the largest distance on A")
    ap.add_argument("--floor", type=float, default=0.15, help="... and at least this (sampling noise alone reaches ~0.1 on a 13-bin statistic at a window of 1000 and a reference of ~1200)")
    ap.add_argument("--fractions", default="0.1,0.2,0.3,1.0")
    ap.add_argument("--shifts", default=",".join(SHIFTS))
    ap.add_argument("--max-requests", type=int, default=5000)
    ap.add_argument("--master-category", help="one_master_category's category (default: the most common)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", type=Path, help="also draw requests-to-alert against the fraction (PNG)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    bundle, split = ensure_bundle(a.catalog, a.out)
    prods = held_back(a.catalog, split)
    half = len(prods) // 2
    stream_a, stream_b = prods[:half], prods[half:]
    log(f"held back: {len(prods)} products; A {len(stream_a)}, B {len(stream_b)}; window {a.window}")
    proc, port = start_server(str(bundle), ["--drift-window", str(a.window)])
    try:
        rep = Replay(f"http://127.0.0.1:{port}")
        chosen, seen_a = choose_thresholds(rep, stream_a, a.margin, a.floor)
        sets = {"kind": chosen["kind"], "fitted": chosen["fitted"]}
        (a.out / "thresholds-fitted.json").write_text(json.dumps(chosen["fitted"], indent=2))
        log(f"thresholds from A, per statistic: {chosen['per_kind']}")
        alarms = false_alarms(rep, stream_b, sets)
        log(f"unshifted B: {alarms}")
        shifter = Shifter(bundle, stream_b, a.master_category)
        runs = []
        for shift in a.shifts.split(","):
            for frac in map(float, a.fractions.split(",")):
                r = shifted(rep, shifter, stream_b, shift, frac, sets, a.window, a.max_requests, a.seed)
                log(f"{shift} {frac:.0%}: " + "; ".join(f"{k} {r[k]['requests']} requests ({r[k]['over']})"
                                                        for k in sets))
                runs.append(r)
    finally:
        stop_group(proc)
    agreement = batch_job_agreement(bundle, stream_b[:a.window], a.window, a.out)
    log(f"batch job vs server: {agreement}")
    result = {"bundle": str(bundle), "catalog": str(a.catalog), "split": split, "window": a.window,
              "held_back": len(prods), "stream_a": len(stream_a), "stream_b": len(stream_b),
              "master_category": shifter.master, "margin": a.margin, "floor": a.floor,
              "largest_on_a": seen_a, "thresholds": chosen["per_kind"],
              "fitted_thresholds": str(a.out / "thresholds-fitted.json"), "unshifted": alarms, "shifts": runs,
              "targets": {k: targets(runs, alarms, k) for k in sets}, "batch_job_vs_server": agreement,
              "seconds": round(time.time() - t0, 1)}
    (a.out / "drift.json").write_text(json.dumps(result, indent=2))
    if a.figure:
        plot(runs, a.max_requests, a.figure)
    print(json.dumps(result, indent=2))


def plot(runs: list[dict], limit: int, path: Path) -> None:
    """Requests until the alert condition holds against the mixture fraction, per shift (both
    threshold sets); a shift not detected within the limit is drawn at the top, hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, name, title in zip(axes, ("kind", "fitted"), ("attrx's thresholds (per statistic)",
                                                          "thresholds fitted per attribute on stream A"), strict=True):
        for shift in dict.fromkeys(r["shift"] for r in runs):
            rs = [r for r in runs if r["shift"] == shift]
            xs = [r["fraction"] for r in rs]
            ys = [r[name]["requests"] if r[name]["requests"] is not None else limit for r in rs]
            line, = ax.plot(xs, ys, marker="o", label=shift)
            missed = [(x, limit) for x, r in zip(xs, rs, strict=True) if r[name]["requests"] is None]
            if missed:
                ax.scatter([x for x, _ in missed], [y for _, y in missed], s=90, facecolors="white", edgecolors=line.get_color(), zorder=3)
        ax.axhline(2000, color="grey", ls=":", lw=1)
        ax.axhline(5000, color="grey", ls="--", lw=1)
        ax.set(title=title, xlabel="share of the stream shifted", xticks=[0.1, 0.2, 0.3, 1.0])
        ax.set_yscale("log")
    axes[0].set_ylabel("requests until the alert condition holds")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def targets(runs: list[dict], alarms: dict, name: str) -> dict:
    full = [r for r in runs if r["fraction"] == 1.0]
    at30 = [r for r in runs if r["fraction"] == 0.3]
    smallest = {}
    for r in runs:
        if r[name]["requests"] is not None:
            smallest[r["shift"]] = min(smallest.get(r["shift"], 1.0), r["fraction"])
    return {"full_within_2000": all(r[name]["requests"] is not None and r[name]["requests"] <= 2000 for r in full),
            "mix30_within_5000": all(r[name]["requests"] is not None and r[name]["requests"] <= 5000 for r in at30),
            "smallest_fraction_detected": smallest, "false_alarms": alarms[name]["false_alarms"]}


if __name__ == "__main__":
    main()
