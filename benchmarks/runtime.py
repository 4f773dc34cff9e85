"""Runtimes side by side on one model: PyTorch eager, onnxruntime fp32 with unfused attention (the
pre-v2 export), onnxruntime fp32 with fused attention (the bundle's model.onnx) and onnxruntime int8
(the bundle's int8 variant), items/s at batch 1, 8 and 32 on real catalog inputs.

    python benchmarks/runtime.py --bundle build/demo-bundle --checkpoint build/demo/checkpoint

Prints JSON. Every configuration runs with the same thread count in one process, in alternating
rounds (each round measures all of them in turn), so machine noise hits them alike; per batch size
it reports each one's median items/s with the range over rounds, and its ratio to PyTorch eager
(the median of the per-round ratios, with their range). Targets: fused fp32 >= 1.5x PyTorch at
every batch size; int8 >= 2x at batch 32 with its accuracy gate (recorded in the bundle) met.
The unfused graph is exported here from the checkpoint; a bundle without an int8 variant gets one
quantised here, outside the accuracy gate (reported as such).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

TARGETS = {"onnxruntime_fp32_fused": 1.5, "onnxruntime_int8_at_32": 2.0}


def _inputs(bundle, batch: int, catalog: str) -> dict[str, np.ndarray]:
    from attrx.service.catalog.reader import read_catalog
    from attrx.service.contract.preprocess import build_inputs, load_image_array, load_tokenizer

    pre = bundle.manifest.preprocess
    tok = load_tokenizer(bundle.tokenizer_path, pre.max_text_len)
    prods = read_catalog(catalog).products[:batch]
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


def _graphs(bundle, ck, tmp: Path) -> tuple[dict[str, Path], dict]:
    """{config: ONNX file} and what is known of the int8 variant's accuracy gate."""
    from attrx.export import precision
    from attrx.export.onnx_export import export_onnx

    pre = ck.preprocess
    unfused = tmp / "unfused.onnx"
    export_onnx(ck.model, ck.attributes, unfused, max_len=pre.max_text_len, image_size=pre.image_size,
                attention="unfused")
    graphs = {"onnxruntime_fp32_unfused": unfused, "onnxruntime_fp32_fused": bundle.model_path}
    if bundle.manifest.model.attention != "fused":
        raise SystemExit(f"{bundle.path} was exported with unfused attention; re-export it (attrx export)")
    v = bundle.manifest.variants.get("int8")
    if v is not None:
        graphs["onnxruntime_int8"] = bundle.variant_path("int8")
        gate = {"source": "bundle", "accepted": True, "attempt": v.parity.get("attempt"),
                "attributes": v.parity.get("attributes")}
    else:  # static int8 as export makes it (calibrated on the training split), without its gate
        from attrx.export.build import eval_set

        calibration = eval_set(ck, None, "train", precision.CALIBRATION_ITEMS)
        precision.to_int8(bundle.model_path, tmp / "int8.onnx", precision.nodes_in(bundle.model_path,
                                                                                 precision.INT8_MORE_SCOPES),
                          calibration)
        graphs["onnxruntime_int8"] = tmp / "int8.onnx"
        gate = {"source": "quantised by this benchmark, not gated",
                "refused_by_export": bundle.manifest.refused.get("int8")}
    return graphs, gate


def _measure(runs: dict, batch: int, rounds: int, seconds: float) -> dict:
    for fn in runs.values():
        fn()  # warm-up
    rates = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            rates[k].append(_rate(fn, batch, seconds))
    out = {"batch": batch}
    for k, r in rates.items():
        ratios = [x / t for x, t in zip(r, rates["torch_eager"], strict=True)]
        out[k] = {"items_per_s": round(statistics.median(r), 1), "range": [round(min(r), 1), round(max(r), 1)],
                  "ratio_to_torch": round(statistics.median(ratios), 2),
                  "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)]}
    return out


def _targets(results: list[dict], gate: dict) -> dict:
    fused = {r["batch"]: r["onnxruntime_fp32_fused"]["ratio_to_torch"] for r in results}
    at32 = next((r["onnxruntime_int8"]["ratio_to_torch"] for r in results if r["batch"] == 32), None)
    return {
        "fused_fp32_over_torch": {"target": TARGETS["onnxruntime_fp32_fused"], "measured": fused,
                                  "met": all(v >= TARGETS["onnxruntime_fp32_fused"] for v in fused.values())},
        "int8_over_torch_at_32": {"target": TARGETS["onnxruntime_int8_at_32"], "measured": at32,
                                  "accuracy_gate_met": gate.get("accepted", False),
                                  "met": at32 is not None and at32 >= TARGETS["onnxruntime_int8_at_32"]
                                  and gate.get("accepted", False)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="build/demo-bundle")
    ap.add_argument("--checkpoint", default="build/demo/checkpoint")
    ap.add_argument("--catalog", default=None, help="catalog for real inputs (default: the training catalog)")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.5, help="time per configuration per round")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()

    import onnxruntime as ort
    import torch

    from attrx.export.precision import session
    from attrx.service.contract.bundle import load_bundle
    from attrx.training.models.checkpoint import load_checkpoint

    torch.set_num_threads(a.threads)
    bundle, ck = load_bundle(a.bundle), load_checkpoint(a.checkpoint)
    catalog = a.catalog or ck.meta["training"]["catalog"]
    outputs = bundle.manifest.model.outputs
    with tempfile.TemporaryDirectory() as tmp:
        graphs, gate = _graphs(bundle, ck, Path(tmp))
        sessions = {k: session(p, a.threads) for k, p in graphs.items()}
    results = []
    for b in [int(x) for x in a.batches.split(",")]:
        feeds = _inputs(bundle, b, catalog)
        tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}

        def run_torch(tfeeds=tfeeds):
            with torch.inference_mode():
                for logits, _w in ck.model(**tfeeds):
                    torch.softmax(logits, -1)

        runs = {"torch_eager": run_torch, **{k: (lambda s=s, f=feeds: s.run(outputs, f)) for k, s in sessions.items()}}
        results.append(_measure(runs, b, a.rounds, a.seconds))
        print(f"batch {b}: " + ", ".join(f"{k} {v['items_per_s']:.0f}/s ({v['ratio_to_torch']}x)"
                                         for k, v in results[-1].items() if k != "batch"), file=sys.stderr)
    print(json.dumps({
        "benchmark": "runtime", "model": bundle.manifest.name, "family": bundle.manifest.model.family,
        "machine": {"cpus": os.cpu_count(), "threads": a.threads, "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": ort.__version__},
        "rounds": a.rounds, "seconds_per_round": a.seconds, "results": results, "int8_gate": gate,
        "targets": _targets(results, gate),
    }, indent=2))


if __name__ == "__main__":
    main()
