"""onnxruntime (CPU) vs PyTorch eager on the same model and the same inputs, side by side.

    python benchmarks/runtime.py --bundle build/demo-bundle --checkpoint build/demo/checkpoint

Prints JSON: items/s per backend at batch 1, 8 and 32, and the ratio onnxruntime / torch. The two
backends are measured in alternating rounds in one process with the same thread count, and the
median round is reported, so machine noise hits both alike. Target: ratio >= 1.3 at batch 8.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def _inputs(bundle, batch: int, catalog: str | None) -> dict[str, np.ndarray]:
    from service.catalog import read_catalog
    from service.preprocess import build_inputs, load_image_array, load_tokenizer

    pre = bundle.manifest.preprocess
    tok = load_tokenizer(bundle.tokenizer_path, pre.max_text_len)
    prods = read_catalog(catalog).products[:batch] if catalog else []
    if len(prods) < batch:
        raise SystemExit(f"need {batch} products in {catalog}")
    imgs = [load_image_array(p.image, pre) if p.image else None for p in prods]
    return build_inputs(tok, [p.title for p in prods], imgs, pre)


def _rate(fn, batch: int, min_seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds and n >= 3:
            return n * batch / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="build/demo-bundle")
    ap.add_argument("--checkpoint", default="build/demo/checkpoint")
    ap.add_argument("--catalog", default=None, help="catalog for real inputs (default: the training catalog)")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.6, help="time per backend per round")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()

    import onnxruntime as ort
    import torch

    from service.bundle import load_bundle
    from training.checkpoint import load_checkpoint

    torch.set_num_threads(a.threads)
    bundle = load_bundle(a.bundle)
    ck = load_checkpoint(a.checkpoint)
    catalog = a.catalog or ck.meta["training"]["catalog"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(bundle.model_path), so, providers=["CPUExecutionProvider"])
    outputs = bundle.manifest.model.outputs

    results = []
    for b in [int(x) for x in a.batches.split(",")]:
        feeds = _inputs(bundle, b, catalog)
        tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}

        def run_ort(feeds=feeds):
            sess.run(outputs, feeds)

        def run_torch(tfeeds=tfeeds):
            with torch.inference_mode():
                for logits, _w in ck.model(**tfeeds):
                    torch.softmax(logits, -1)

        run_ort(), run_torch()  # warm-up
        o, t = [], []
        for _ in range(a.rounds):
            o.append(_rate(run_ort, b, a.seconds))
            t.append(_rate(run_torch, b, a.seconds))
        om, tm = statistics.median(o), statistics.median(t)
        results.append({"batch": b, "onnxruntime_items_per_s": round(om, 1), "torch_eager_items_per_s": round(tm, 1),
                        "ratio_ort_over_torch": round(om / tm, 2)})
        print(f"batch {b}: onnxruntime {om:.0f} items/s, torch {tm:.0f} items/s, ratio {om / tm:.2f}",
              file=sys.stderr)
    at8 = next((r["ratio_ort_over_torch"] for r in results if r["batch"] == 8), None)
    print(json.dumps({
        "benchmark": "runtime", "model": bundle.manifest.name, "family": bundle.manifest.model.family,
        "machine": {"cpus": os.cpu_count(), "threads": a.threads, "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": ort.__version__},
        "rounds": a.rounds, "results": results,
        "target": {"ratio_at_batch_8": 1.3, "measured": at8, "met": at8 is not None and at8 >= 1.3},
    }, indent=2))


if __name__ == "__main__":
    main()
