"""`attrx export`: checkpoint (+ its calibration from `attrx eval`) -> model bundle, parity-checked."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from export.onnx import example_inputs, export_onnx
from export.parity import check_parity
from service.bundle import MANIFEST, SCHEMA_VERSION, load_bundle, sha256_file
from service.catalog import read_catalog
from service.preprocess import INPUT_NAMES
from training.checkpoint import CALIBRATION, METRICS, TOKENIZER, load_checkpoint
from training.data import encode_catalog


def _real_batch(ck, limit: int = 32) -> dict[str, np.ndarray] | None:
    """Up to `limit` real products from the training catalog, if it is still where it was."""
    path = ck.meta.get("training", {}).get("catalog")
    if not path or not Path(path).is_file():
        return None
    cat = read_catalog(path, ck.attributes)
    cat.products = cat.products[: limit * 2]
    data, _ = encode_catalog(cat, ck.tokenizer, ck.preprocess, ck.classes, progress=False, **ck.meta.get("split", {}))
    if len(data) == 0:
        return None
    return data.take(np.arange(min(limit, len(data))))


def _metrics_summary(metrics: dict) -> dict:
    out = {}
    for a, r in metrics.get("attributes", {}).items():
        out[a] = {k: r[k] for k in ("accuracy", "macro_f1", "accuracy_title_lacks_label", "mean_image_weight")}
        out[a]["recall_at_precision"] = {t: x["macro_recall"] for t, x in r["recall_at_precision"].items()}
    return {"splits": metrics.get("splits"), "attributes": out}


def export_bundle(checkpoint: str | Path, out: str | Path, *, name: str | None = None, version: str = "0.1.0",
                  opset: int = 17, tolerance: float = 1e-4) -> Path:
    t0 = time.time()
    ck = load_checkpoint(checkpoint)
    calib_file = ck.path / CALIBRATION
    if not calib_file.is_file():
        raise FileNotFoundError(f"{calib_file} is missing: `attrx train` writes it; for an older checkpoint run "
                                f"`attrx eval --checkpoint {ck.path} --catalog ...` first, it calibrates the "
                                "per-class thresholds the bundle carries")
    calib = json.loads(calib_file.read_text())
    metrics = json.loads((ck.path / METRICS).read_text()) if (ck.path / METRICS).is_file() else {}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pre = ck.preprocess
        onnx_path = tmp / "model.onnx"
        outputs = export_onnx(ck.model, ck.attributes, onnx_path, max_len=pre.max_text_len,
                              image_size=pre.image_size, opset=opset)
        batches = {f"random_b{b}": example_inputs(ck.model, b, pre.max_text_len, pre.image_size, seed=b)
                   for b in (1, 7, 32)}
        real = _real_batch(ck)
        if real is not None:
            batches["real_catalog"] = real
        else:
            print("export: training catalog not found; parity checked on random batches only")
        parity = check_parity(ck.model, onnx_path, batches, outputs, tolerance)
        worst = max(r["max_abs_diff"] for r in parity.values())
        shutil.copyfile(ck.path / TOKENIZER, tmp / TOKENIZER)

        targets = calib["precision_targets"]
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": name or ck.path.name,
            "version": version,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": {"family": ck.model_config.family, "config": ck.model_config.model_dump(),
                      "inputs": list(INPUT_NAMES), "outputs": outputs, "opset": opset},
            "attributes": [{"name": a, "classes": ck.classes[a], "thresholds": calib["thresholds"][a],
                            "support": calib.get("support", {}).get(a), "min_support": calib.get("min_support")}
                           for a in ck.attributes],
            "precision_targets": targets,
            "preprocess": pre.model_dump(),
            "files": {f: {"sha256": sha256_file(tmp / f), "bytes": (tmp / f).stat().st_size}
                      for f in ("model.onnx", TOKENIZER)},
            "metrics": _metrics_summary(metrics),
            "parity": {"tolerance": tolerance, "max_abs_diff": worst, "batches": parity},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if metrics:
            (tmp / METRICS).write_text(json.dumps(metrics, indent=2))
        load_bundle(tmp)  # never hand out a bundle the service would refuse
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = (out / "model.onnx").stat().st_size / 1e6
    print(f"bundle written to {out}: model.onnx {size:.1f} MB, opset {opset}, parity max |diff| {worst:.2e} "
          f"over {sum(r['batch'] for r in parity.values())} items ({time.time() - t0:.1f}s)")
    return out
