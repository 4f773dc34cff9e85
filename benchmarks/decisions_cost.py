"""What situations, conflicts and constraints cost in serving, measured side by side in one run.

    python benchmarks/decisions_cost.py --checkpoint build/quality/cma_clip \\
        --catalog ../shared/data/fashion-products/catalog.csv

The checkpoint is exported twice (with the title-only and image-only outputs the conflict check
reads, and without: `attrx export --no-unimodal`). Three comparisons, each alternating its two
sides for --repeats rounds and reporting the median ratio and its range:
1. the model: onnxruntime batch-32 inference, unimodal outputs vs none (in this process);
2. encode_response per product: the bundle's decisions (situation thresholds, conflict check,
   constrained decoding) vs plain per-class thresholds (`ATTRX_DECISIONS=plain`);
3. HTTP throughput at concurrency --concurrency-level (wrk, as benchmarks/serve.py): `attrx serve`
   with decisions full vs plain, the same bundle; each server gets an uncounted warm-up load first.
Target (issue "Accepted means what it says"), reported, not asserted: 3. within 5%.
Prints JSON; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve import LUA, log, serve_and_load  # noqa: E402


def _spread(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 4), "range": [round(min(xs), 4), round(max(xs), 4)], "n": len(xs)}


def model_cost(bundles: dict[str, Path], products, repeats: int, runs: int = 20) -> dict:
    """Batch-32 inference time, with unimodal outputs over without, alternating per round."""
    from attrx.service.contract.bundle import load_bundle
    from attrx.service.inference.predictor import Predictor
    from attrx.service.inference.runtime import load_backend

    sides = {}
    for name, path in bundles.items():
        b = load_bundle(path)
        pred = Predictor(b, backend=load_backend(b, precision="fp32"))
        feeds = pred.batch([pred.decode_request(p.title, p.image.read_bytes()).inputs for p in products[:32]])
        sides[name] = (pred, feeds)
        pred.predict(feeds)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(repeats):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            pred, feeds = sides[name]
            t0 = time.perf_counter()
            for _ in range(runs):
                pred.predict(feeds)
            times[name].append((time.perf_counter() - t0) / runs * 1000)
    ratios = [u / p for u, p in zip(times["unimodal"], times["no-unimodal"], strict=True)]
    return {"batch_32_ms": {k: _spread(v) for k, v in times.items()}, "unimodal_over_none": _spread(ratios)}


def encode_cost(bundle: Path, products, repeats: int) -> dict:
    """encode_response per product (the event loop's share), decisions full vs plain."""
    from attrx.service.contract.bundle import load_bundle
    from attrx.service.inference.predictor import Predictor
    from attrx.service.inference.runtime import load_backend

    b = load_bundle(bundle)
    preds = {k: Predictor(b, decisions=k) for k in ("full", "plain")}
    preds["full"].backend = load_backend(b)
    items = [(p.title, p.image.read_bytes()) for p in products[:32]]
    decoded = [preds["full"].decode_request(*it) for it in items]
    outputs = preds["full"].run_batch([d.inputs for d in decoded])
    sits = [d.situations for d in decoded]
    times: dict[str, list[float]] = {k: [] for k in preds}
    for r in range(repeats):
        for name in (["full", "plain"] if r % 2 == 0 else ["plain", "full"]):
            t0 = time.perf_counter()
            for _ in range(20):
                for i in range(len(items)):
                    preds[name].encode_response(outputs, i, key="0.90", situations=sits[i])
            times[name].append((time.perf_counter() - t0) / (20 * len(items)) * 1e6)
    return {"us_per_product": {k: _spread(v) for k, v in times.items()},
            "full_minus_plain_us": _spread([f - p for f, p in zip(times["full"], times["plain"], strict=True)])}


def http_cost(a, bundle: Path, products, work: Path) -> dict:
    bodies, script = work / "bodies.jsonl", work / "post.lua"
    bodies.write_text("".join(json.dumps({"title": p.title, "image_base64": base64.b64encode(
        p.image.read_bytes()).decode()}) + "\n" for p in products))
    script.write_text(LUA)
    # each server first takes one load run that is not counted (onnxruntime settles its arenas for
    # the batch sizes it meets), then the measured one
    a.bundle, a.concurrency = str(bundle), [a.concurrency_level, a.concurrency_level]
    reps: dict[str, list[float]] = {"full": [], "plain": []}
    for r in range(a.repeats):
        for name in (["full", "plain"] if r % 2 == 0 else ["plain", "full"]):
            rows = serve_and_load(a, f"decisions-{name}", ["--decisions", name, "--max-batch-size", "32"], bodies,
                                  script, a.concurrency)
            reps[name].append(rows[1]["requests_per_s"])
    ratios = [f / p for f, p in zip(reps["full"], reps["plain"], strict=True)]
    return {"concurrency": a.concurrency_level, "requests_per_s": {k: _spread(v) for k, v in reps.items()},
            "full_over_plain": _spread(ratios), "target": "full_over_plain median >= 0.95",
            "met": statistics.median(ratios) >= 0.95}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "build" / "quality" / "cma_clip"))
    ap.add_argument("--catalog", default=str(ROOT.parent / "shared" / "data" / "fashion-products" / "catalog.csv"))
    ap.add_argument("--concurrency-level", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per HTTP load run (one warm-up, one measured)")
    ap.add_argument("--products", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-http", action="store_true", help="only the in-process comparisons (1 and 2)")
    a = ap.parse_args()
    from attrx.export.build import export_bundle
    from attrx.service.catalog.reader import read_catalog

    products = [p for p in read_catalog(a.catalog).products if p.title and p.image][: a.products]
    work = Path(tempfile.mkdtemp(prefix="attrx-decisions-"))
    log("exporting the checkpoint with and without unimodal outputs...")
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON result
        bundles = {"unimodal": export_bundle(a.checkpoint, work / "unimodal", unimodal=True).path,
                   "no-unimodal": export_bundle(a.checkpoint, work / "none", unimodal=False).path}
    a.max_queue_delay_ms, a.max_batch_size = 5.0, 32
    family = json.loads((Path(a.checkpoint) / "config.json").read_text())["model"]["family"]
    result = {"benchmark": "decisions_cost", "machine": {"cpus": os.cpu_count()}, "checkpoint": a.checkpoint,
              "family": family, "repeats": a.repeats}
    log("model: batch-32 inference with and without unimodal outputs...")
    result["model"] = model_cost(bundles, products, a.repeats)
    log("encode_response: decisions full vs plain...")
    result["encode_response"] = encode_cost(bundles["unimodal"], products, a.repeats)
    if not a.skip_http:
        log(f"HTTP at concurrency {a.concurrency_level}: decisions full vs plain...")
        result["http"] = http_cost(a, bundles["unimodal"], products, work)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
