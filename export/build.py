"""`attrx export`: checkpoint (+ its calibration from `attrx eval`) -> model bundle, parity-checked.

The bundle carries the calibration as it is: thresholds per situation, the label words the
situations are read with, the conflict checks and the record constraints; and, unless
`unimodal=False`, the title-only and image-only outputs the conflict checks read.

The fp32 graph is always written and must match PyTorch within `tolerance`. Each further precision
asked for (fp16, int8) is converted from it and kept only if it passes its gate on real catalog
items (export/precision.py); a refused one is named, with the reason, in the manifest and on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from attrx.export import precision
from attrx.export.drift_reference import drift_reference
from attrx.export.onnx_export import example_inputs, export_onnx
from attrx.export.parity import check_parity
from attrx.service.catalog.reader import read_catalog
from attrx.service.contract.bundle import (
    MANIFEST,
    PRECISIONS,
    SCHEMA_VERSION,
    load_bundle,
    output_names,
    sha256_file,
)
from attrx.service.contract.label_variants import VARIANTS_FILE
from attrx.service.contract.preprocess import INPUT_NAMES
from attrx.training.data.encode import encode_catalog, split_of
from attrx.training.data.variant_learning import read_variants
from attrx.training.evaluation.calibration import attribute_specs
from attrx.training.models.checkpoint import CALIBRATION, METRICS, TOKENIZER, load_checkpoint


@dataclass
class ExportResult:
    path: Path
    variants: list[str]
    refused: dict[str, str] = field(default_factory=dict)


def _catalog_path(ck, catalog: str | Path | None) -> Path | None:
    """The catalog given (which must exist), else the training catalog if it is still there."""
    if catalog is not None:
        if not Path(catalog).is_file():
            raise FileNotFoundError(f"--catalog {catalog}: no such file")
        return Path(catalog)
    path = ck.meta.get("training", {}).get("catalog")
    return Path(path) if path and Path(path).is_file() else None


# enough to see a 0.005 accuracy drop, few enough to keep export quick on a large catalog
EVAL_LIMIT = 5000


def eval_set(ck, catalog: str | Path | None, split: str = "test", limit: int | None = EVAL_LIMIT) -> precision.EvalSet | None:
    """The checkpoint's `split` of its training catalog (or of `catalog`), encoded, with labels
    (its first `limit` products)."""
    path = _catalog_path(ck, catalog)
    if path is None:
        return None
    sp = ck.meta.get("split", {})
    cat = read_catalog(path, ck.attributes)
    cat.products = [p for p in cat.products if split_of(p.id, **sp) == split][:limit]
    if not cat.products:
        return None
    data, _ = encode_catalog(cat, ck.tokenizer, ck.preprocess, ck.classes, progress=False, **sp)
    if len(data) == 0:
        return None
    return precision.EvalSet(data.arrays, data.labels, list(ck.classes), f"{path} ({split} split)")


def _read_calibration(ck) -> tuple[dict, dict]:
    calib_file = ck.path / CALIBRATION
    if not calib_file.is_file():
        raise FileNotFoundError(f"{calib_file} is missing: `attrx train` writes it; for an older checkpoint run "
                                f"`attrx eval --checkpoint {ck.path} --catalog ...` first, it calibrates the "
                                "per-class thresholds the bundle carries")
    metrics = json.loads((ck.path / METRICS).read_text()) if (ck.path / METRICS).is_file() else {}
    calib = json.loads(calib_file.read_text())
    edited = read_variants(ck.path)
    if edited is not None and "label_variants" in calib and edited != calib["label_variants"]:
        raise ValueError(f"{ck.path / VARIANTS_FILE} differs from the variants the thresholds were calibrated with: "
                         f"run `attrx eval --checkpoint {ck.path} CATALOG` first, so that situations and "
                         "thresholds follow the edited variants")
    return calib, metrics


def _metrics_summary(metrics: dict) -> dict:
    out = {}
    for a, r in metrics.get("attributes", {}).items():
        out[a] = {k: r[k] for k in ("accuracy", "macro_f1", "accuracy_title_lacks_label", "mean_image_weight")}
        out[a]["recall_at_precision"] = {t: x["macro_recall"] for t, x in r["recall_at_precision"].items()}
    return {"splits": metrics.get("splits"), "attributes": out}


def _fp32_parity(ck, onnx_path: Path, outputs: list[str], ev: precision.EvalSet | None, tolerance: float) -> dict:
    pre = ck.preprocess
    batches = {f"random_b{b}": example_inputs(ck.model, b, pre.max_text_len, pre.image_size, seed=b)
               for b in (1, 7, 32)}
    if ev is not None:
        batches["real_catalog"] = {k: v[:32] for k, v in ev.inputs.items()}
    else:
        print("export: training catalog not found; parity checked on random batches only", file=sys.stderr)
    report = check_parity(ck.model, onnx_path, batches, outputs, tolerance)
    return {"tolerance": tolerance, "max_abs_diff": max(r["max_abs_diff"] for r in report.values()),
            "batches": report}


def _precision_variants(tmp: Path, precisions: list[str], outputs: list[str], ev: precision.EvalSet | None,
                        calibration: precision.EvalSet | None = None) -> tuple[dict, dict[str, str]]:
    """fp16/int8 variants that pass their gates -> ({key: variant entry}, {refused key: reason})."""
    variants, refused = {}, {}
    wanted = [p for p in precisions if p != "fp32"]
    if wanted and ev is None:
        return {}, {p: "no real catalog items to check it on: the training catalog is not where the "
                       "checkpoint recorded it (pass --catalog)" for p in wanted}
    # the gates read each attribute's probabilities and weights by position: give them exactly those
    # (with the title-only and image-only outputs in between, attribute j's were not at 2j and 2j+1)
    outputs = [n for a in ev.attributes for n in output_names(a)] if wanted else outputs
    ref = precision.run_session(precision.session(tmp / "model.onnx"), ev.inputs, outputs) if wanted else None
    for prec in wanted:
        print(f"export: converting to {prec} and checking it on {len(ev)} catalog items", file=sys.stderr)
        outcome = precision.make_variant(prec, tmp / "model.onnx", tmp / precision.FILES[prec], outputs, ev, ref,
                                         calibration=calibration)
        print(f"export: {precision.describe(outcome)}", file=sys.stderr)
        if outcome.accepted:
            variants[prec] = {"file": precision.FILES[prec], "format": "onnx", "precision": prec,
                              "providers": precision.INTENDED_PROVIDERS[prec], "parity": outcome.report}
        else:
            refused[prec] = "; ".join(outcome.reasons)
    return variants, refused


def _manifest(ck, calib: dict, metrics: dict, *, name, version, outputs, opset, attention, parity, variants,
              refused, files: dict) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name or ck.path.name,
        "version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"family": ck.model_config.family, "config": ck.model_config.model_dump(),
                  "inputs": list(INPUT_NAMES), "outputs": outputs, "opset": opset, "attention": attention,
                  "unimodal": any(o.endswith(".text_probs") for o in outputs)},
        "attributes": [a.model_dump() for a in attribute_specs(calib, ck.classes)],
        "constraints": calib.get("constraints"),
        "precision_targets": calib["precision_targets"],
        "preprocess": ck.preprocess.model_dump(),
        "files": files,
        "metrics": _metrics_summary(metrics),
        "parity": parity,
        "variants": {"fp32": {"file": "model.onnx", "format": "onnx", "precision": "fp32",
                              "providers": precision.INTENDED_PROVIDERS["fp32"], "parity": parity}, **variants},
        "refused": refused,
    }


def check_precisions(precisions: list[str]) -> list[str]:
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ValueError(f"unknown precision {', '.join(bad)}; use {', '.join(PRECISIONS)}")
    return ["fp32", *[p for p in PRECISIONS[1:] if p in precisions]]


def _readable_as_a_folder(path: Path) -> None:
    """mkdtemp makes the folder 0700: give it the mode a plain mkdir would (0777 less the umask), so
    another user can read the bundle: a container's non-root server with the folder mounted, say."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)


def export_bundle(checkpoint: str | Path, out: str | Path, *, name: str | None = None, version: str = "0.1.0",
                  precisions: list[str] = ("fp32",), attention: str = "fused", opset: int | None = None,
                  tolerance: float = 1e-4, catalog: str | Path | None = None, unimodal: bool = True,
                  progress: bool = True) -> ExportResult:
    t0 = time.time()
    bar = tqdm(total=5, desc="export", unit="step", disable=None if progress else True, leave=False)
    precisions = check_precisions(list(precisions))
    ck = load_checkpoint(checkpoint)
    calib, metrics = _read_calibration(ck)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pre = ck.preprocess
        _step(bar, "ONNX graph")
        outputs = export_onnx(ck.model, ck.attributes, tmp / "model.onnx", max_len=pre.max_text_len,
                              image_size=pre.image_size, attention=attention, opset=opset, unimodal=unimodal)
        opset = _opset_of(tmp / "model.onnx")
        _step(bar, "fp32 parity")
        ev = eval_set(ck, catalog)
        parity = _fp32_parity(ck, tmp / "model.onnx", outputs, ev, tolerance)
        calibration = eval_set(ck, catalog, "train", precision.CALIBRATION_ITEMS) if "int8" in precisions else None
        _step(bar, "precision variants")
        variants, refused = _precision_variants(tmp, precisions, outputs, ev, calibration)
        shutil.copyfile(ck.path / TOKENIZER, tmp / TOKENIZER)
        files = {f: {"sha256": sha256_file(tmp / f), "bytes": (tmp / f).stat().st_size}
                 for f in ("model.onnx", TOKENIZER, *(v["file"] for v in variants.values()))}
        manifest = _manifest(ck, calib, metrics, name=name, version=version, outputs=outputs, opset=opset,
                             attention=attention, parity=parity, variants=variants, refused=refused, files=files)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if metrics:
            (tmp / METRICS).write_text(json.dumps(metrics, indent=2))
        if (ck.path / VARIANTS_FILE).is_file():  # the variants used (also in the manifest) and the proposed
            shutil.copyfile(ck.path / VARIANTS_FILE, tmp / VARIANTS_FILE)
        load_bundle(tmp)  # never hand out a bundle the service would refuse
        _step(bar, "drift reference")
        _add_drift_reference(tmp, manifest, ck, catalog, progress)
        _readable_as_a_folder(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        _step(bar, "written")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    sizes = ", ".join(f"{k} {(out / v['file']).stat().st_size / 1e6:.1f} MB"
                      for k, v in manifest["variants"].items())
    print(f"bundle written to {out}: {sizes}; {attention} attention, opset {opset}, fp32 parity max |diff| "
          f"{parity['max_abs_diff']:.2e} ({time.time() - t0:.1f}s)")
    return ExportResult(out, list(manifest["variants"]), refused)


def _step(bar, name: str) -> None:
    """The export's step bar: the step now running (each step before it is done)."""
    if getattr(bar, "attrx_started", False):
        bar.update(1)
    bar.attrx_started = True
    bar.set_postfix_str(name)


def _add_drift_reference(tmp: Path, manifest: dict, ck, catalog, progress: bool = True) -> None:
    """The validation split's drift statistics, into the manifest (none without the catalog)."""
    path = _catalog_path(ck, catalog)
    if path is None:
        print("export: training catalog not found; the bundle has no drift reference (serve with "
              "--drift-reference, or re-baseline from traffic)", file=sys.stderr)
        return
    ref = drift_reference(tmp, path, ck.meta.get("split", {}), progress=progress)
    if ref is not None:
        manifest["drift_reference"] = ref
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        load_bundle(tmp)


def _opset_of(path: Path) -> int:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
