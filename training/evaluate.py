"""`attrx eval`: per-attribute accuracy, macro-F1 and recall@precision; per-class thresholds.

Thresholds are calibrated on the validation split and recall is reported on the test split
(both come from the deterministic id-hash split recorded in the checkpoint). Writes
metrics.json, calibration.json (read by `attrx export`) and one precision-recall plot per attribute.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from service.catalog import read_catalog
from training import metrics as M
from training.checkpoint import CALIBRATION, METRICS, load_checkpoint
from training.data import IGNORE, encode_catalog
from training.train import predict


def _title_names(title: str | None, label: str) -> bool:
    if not title:
        return False
    return re.search(rf"\b{re.escape(label.lower())}\b", title.lower()) is not None


def evaluate(checkpoint: str | Path, catalog: str | Path, *, out: str | Path | None = None,
             targets: list[float] = (0.90, 0.95), min_positives: int = 5, progress: bool = True) -> dict:
    ck = load_checkpoint(checkpoint)
    out = Path(out) if out else ck.path
    out.mkdir(parents=True, exist_ok=True)
    attrs = ck.attributes
    split = ck.meta.get("split", {})
    cat = read_catalog(catalog, attrs)
    data, img_errors = encode_catalog(cat, ck.tokenizer, ck.preprocess, ck.classes, progress=progress, **split)
    va, te = data.indices("val"), data.indices("test")
    if len(va) == 0 or len(te) == 0:
        raise ValueError(f"{catalog}: the validation ({len(va)}) or test ({len(te)}) split is empty")
    p_val, _ = predict(ck.model, data, va)
    p_test, w_test = predict(ck.model, data, te)

    targets = sorted(float(t) for t in targets)
    calibration, report = {}, {}
    for j, a in enumerate(attrs):
        y_val, y_test = data.labels[va, j], data.labels[te, j]
        lab_val = y_val != IGNORE
        calibration[a] = M.calibrate(p_val[j][lab_val], y_val[lab_val], targets)
        lab = y_test != IGNORE
        pt, yt, wt = p_test[j][lab], y_test[lab], w_test[j][lab]
        prods = [data.products[i] for i in te[lab]]
        both = np.array([p.title is not None and p.image is not None for p in prods], dtype=bool)
        # products whose title does not name their label: what the image has to carry
        unnamed = np.array([not _title_names(p.title, p.labels[a]) for p in prods], dtype=bool)
        val_pos = np.bincount(y_val[y_val >= 0], minlength=len(ck.classes[a]))
        report[a] = {
            "n_test": int(lab.sum()),
            "accuracy": M.accuracy(pt, yt),
            "macro_f1": M.macro_f1(pt, yt),
            "accuracy_title_lacks_label": M.accuracy(pt[unnamed], yt[unnamed]) if unnamed.any() else None,
            "n_title_lacks_label": int(unnamed.sum()),
            "mean_image_weight": float(wt[both, 1].mean()) if both.any() else None,
            "recall_at_precision": {
                f"{t:.2f}": M.recall_report(pt, yt, calibration[a][f"{t:.2f}"], ck.classes[a], val_pos, min_positives)
                for t in targets
            },
        }
        _plot(out / f"pr_{a}.png", a, pt, yt, calibration[a])

    result = {
        "checkpoint": str(ck.path), "catalog": str(catalog),
        "splits": {"val": len(va), "test": len(te)}, "rows_skipped": len(cat.errors) + len(img_errors),
        "precision_targets": targets, "attributes": report,
    }
    (out / METRICS).write_text(json.dumps(result, indent=2))
    (out / CALIBRATION).write_text(json.dumps({"precision_targets": targets, "thresholds": calibration}, indent=2))
    _print_table(result)
    print(f"metrics: {out / METRICS}; thresholds: {out / CALIBRATION}; plots: {out}/pr_*.png")
    return result


def _fmt(v) -> str:
    if v is None:
        return "-"
    return v if isinstance(v, str) else f"{v:.3f}"


def _print_table(result: dict) -> None:
    targets = [f"{t:.2f}" for t in result["precision_targets"]]
    head = ["attribute", "acc", "macroF1", "acc(title lacks)", "λ_image"] + [f"R@P{t}" for t in targets]
    rows = [head]
    for a, r in result["attributes"].items():
        rap = [r["recall_at_precision"][t] for t in targets]
        rows.append([a, _fmt(r["accuracy"]), _fmt(r["macro_f1"]), _fmt(r["accuracy_title_lacks_label"]),
                     _fmt(r["mean_image_weight"])]
                    + [f"{_fmt(x['macro_recall'])} ({x['classes_counted']} cls)" for x in rap])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def _plot(path: Path, attr: str, probs: np.ndarray, labels: np.ndarray, thresholds: dict[str, list]) -> None:
    """Precision-recall of the attribute's accepted predictions as one confidence threshold moves,
    with the operating points of the calibrated per-class thresholds on this (test) split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = probs.max(1)
    pred = probs.argmax(1)
    correct = pred == labels
    order = np.argsort(-conf, kind="stable")
    tp = np.cumsum(correct[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=100)
    ax.plot(recall, precision, lw=2, label="one threshold for all classes")
    for (key, ths), colour in zip(thresholds.items(), ("tab:orange", "tab:red", "tab:purple"), strict=False):
        t = float(key)
        thr = np.array([np.inf if x is None else x for x in ths])
        accepted = conf >= thr[pred]
        if accepted.any():
            p_op, r_op = correct[accepted].mean(), (correct & accepted).sum() / len(labels)
            ax.plot([r_op], [p_op], "o", color=colour, ms=8,
                    label=f"calibrated for P≥{t:.2f}: P={p_op:.3f} R={r_op:.3f}")
        ax.axhline(t, ls="--", lw=1, color=colour, alpha=0.6)
    ax.set_xlabel("recall (accepted and correct / all)")
    ax.set_ylabel("precision (correct / accepted)")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(min(0.5, float(precision.min()) - 0.02), 1.01)
    ax.set_title(f"{attr}: test split (n={len(labels)})")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
