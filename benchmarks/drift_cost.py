"""What drift telemetry costs the inference process, per batch, on against off (issue "Know when the
catalog drifts": <= 3%).

    python benchmarks/drift_cost.py --bundle build/demo-bundle --catalog build/demo/data/catalog.csv

In one process, the inference process's work per batch: the model run and the prediction metrics
(off), and the same plus drift (on: attrx.service.engine.drift_feed.EngineDrift: the batch kept per
batch, and folded into the window and its shared-memory block at the server's cadence, inline here
so that its cost counts), for batches of 1, 8 and 32 real products. Each repetition times
both, alternating which goes first; the overhead is on/off - 1 per repetition (median, min, max).
The same run also times drift's own calls inline ("drift_share_of_on"): what they took of the "on"
time, a figure the machine's load moves far less than the ratio of two timings.
Also reported: the profile's share of decoding a product (front-end side, per request) and what
one comparison costs the front-end answering /metrics (per scrape).

Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def spread(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 4), "min": round(min(xs), 4), "max": round(max(xs), 4)}


def batch_overhead(predictor, metrics, drift, items: list[dict], reps: int, seconds: float) -> dict:
    from attrx.service.contract.drift_stats import PROFILE_KEY

    def off():
        metrics.observe_batch(predictor.run_batch(items))

    last = [time.perf_counter()]
    spent = [0.0]  # time inside drift's calls, measured inline: the share of "on" they took

    def on():  # the fold runs inline at the server's cadence, so its cost is in the figure
        outputs = predictor.run_batch(items)
        metrics.observe_batch(outputs)
        t0 = time.perf_counter()
        drift.observe(outputs, np.concatenate([it[PROFILE_KEY] for it in items]))
        if t0 - last[0] >= drift.interval:
            drift.fold()
            last[0] = time.perf_counter()
        spent[0] += time.perf_counter() - t0

    n = max(3, int(seconds / max(_timed(off, 3), 1e-4)))
    ratios, t_off, shares = [], [], []
    for r in range(reps):
        pair = {}
        for name, fn in ((("on", on), ("off", off)) if r % 2 else (("off", off), ("on", on))):
            spent[0] = 0.0
            pair[name] = _timed(fn, n)
            if name == "on":
                shares.append(spent[0] / (pair["on"] * n))
        ratios.append(pair["on"] / pair["off"] - 1)
        t_off.append(pair["off"] * 1e3)
    return {"batch": len(items), "iterations": n, "overhead": spread(ratios), "drift_share_of_on": spread(shares),
            "batch_ms_off": spread(t_off)}


def front_costs(predictor, manifest, drift, products: list, reps: int) -> dict:
    from attrx.service.contract.drift_stats import profile
    from attrx.service.http.drift_report import FrontDrift
    from attrx.service.telemetry.prometheus import Metrics

    titles = [(p.title, p.image.read_bytes() if p.image else None) for p in products[:64]]
    arr = predictor.decode_request(*titles[0]).inputs["pixel_values"][0]
    t_prepare = statistics.median(_timed(lambda: [predictor.decode_request(t, im) for t, im in titles], 1)
                                  for _ in range(reps)) / len(titles)
    t_profile = statistics.median(_timed(lambda: profile([0] * 7, "a title of some length", (60, 80), arr), 200)
                                  for _ in range(reps))
    front = FrontDrift(manifest, drift.info, None)
    m = Metrics([a.name for a in manifest.attributes])
    t_scrape = statistics.median(_timed(lambda: m.set_drift(front.compare()), 20) for _ in range(reps))
    return {"decode_ms": round(t_prepare * 1e3, 3), "profile_ms": round(t_profile * 1e3, 4),
            "profile_share_of_decode": round(t_profile / t_prepare, 4), "compare_per_scrape_ms": round(t_scrape * 1e3, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "build/demo-bundle"))
    ap.add_argument("--catalog", default=str(ROOT / "build/demo/data/catalog.csv"))
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--repetitions", type=int, default=101, help="on/off pairs, alternating which goes first")
    ap.add_argument("--seconds", type=float, default=0.1, help="per timing (short: the machine's load drifts)")
    ap.add_argument("--variant", default="auto")
    a = ap.parse_args()

    from attrx.service.catalog.reader import read_catalog
    from attrx.service.engine.drift_feed import EngineDrift
    from attrx.service.inference.predictor import load_predictor
    from attrx.service.settings import ServeSettings
    from attrx.service.telemetry.prometheus import Metrics

    settings = ServeSettings(bundle=a.bundle, variant=a.variant, workers=1)
    predictor = load_predictor(settings)
    manifest = predictor.bundle.manifest
    metrics = Metrics([x.name for x in manifest.attributes], front=False)
    drift = EngineDrift(settings, manifest)
    products = read_catalog(a.catalog).products[:64]
    items = [predictor.decode_request(p.title, p.image.read_bytes() if p.image else None).inputs for p in products]
    try:
        result = {"bundle": a.bundle, "variant": predictor.backend.variant, "window": settings.drift_window,
                  "reference": drift.block.read_reference()[2],
                  "per_batch": [batch_overhead(predictor, metrics, drift, items[:b], a.repetitions, a.seconds)
                                for b in map(int, a.batches.split(","))],
                  "front_end": front_costs(predictor, manifest, drift, products, a.repetitions)}
    finally:
        drift.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
