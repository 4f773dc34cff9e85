"""`attrx eval`: per-attribute accuracy, macro-F1 and recall@precision; per-class thresholds.

Thresholds are calibrated on the validation split and recall is reported on the test split
(both come from the deterministic id-hash split recorded in the checkpoint). Writes
metrics.json, calibration.json (read by `attrx export`) and one precision-recall plot per attribute.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from service.catalog import read_catalog
from training import metrics as M
from training.checkpoint import CALIBRATION, METRICS, load_checkpoint
from training.data import IGNORE, encode_catalog, split_of
from training.train import predict


def _title_names(title: str | None, label: str) -> bool:
    if not title:
        return False
    return re.search(rf"\b{re.escape(label.lower())}\b", title.lower()) is not None


def strip_words(title: str | None, words: list[str]) -> str | None:
    """Remove whole-word, case-insensitive occurrences of `words` (longest first) from a title."""
    if not title:
        return title
    for w in sorted(words, key=len, reverse=True):
        title = re.sub(rf"(?<!\w){re.escape(w)}(?!\w)", " ", title, flags=re.IGNORECASE)
    return " ".join(title.split()) or None


def evaluate(checkpoint: str | Path, catalog: str | Path, *, out: str | Path | None = None,
             targets: list[float] = (0.90, 0.95), min_positives: int = 5, progress: bool = True,
             split: str = "test", drop_title: bool = False, drop_image: bool = False,
             strip_label_words: list[str] = (), report: str | Path | None = None) -> dict:
    """split="test": thresholds calibrated on the checkpoint's validation split, figures on its test
    split (the catalog it was trained on). split="all": every row of any catalog with the same
    attribute columns, at the thresholds the checkpoint was calibrated with. drop_title /
    drop_image / strip_label_words change the evaluated rows only (test conditions)."""
    ck = load_checkpoint(checkpoint)
    attrs = ck.attributes
    if split not in ("test", "all"):
        raise ValueError(f"split must be 'test' or 'all', got {split!r}")
    if drop_title and drop_image:
        raise ValueError("--drop-title and --drop-image together leave nothing to predict from")
    unknown = [a for a in strip_label_words if a not in ck.classes]
    if unknown:
        raise ValueError(f"--strip-label-words {unknown}: the model has no such attribute ({', '.join(attrs)})")
    conditioned = bool(drop_title or drop_image or strip_label_words)
    custom = conditioned or split == "all"
    if out is None:
        tag = "-".join(["all" if split == "all" else "test", Path(catalog).stem]
                       + (["no-title"] if drop_title else []) + (["no-image"] if drop_image else [])
                       + [f"no-{a}-words" for a in strip_label_words])
        out = ck.path / "eval" / tag if custom else ck.path
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sp = ck.meta.get("split", {})
    cat = read_catalog(catalog, attrs)
    words = [w for a in strip_label_words for w in ck.classes[a]]
    kept, excluded = [], 0
    for p in cat.products:
        if conditioned and (split == "all" or split_of(p.id, **sp) == "test"):
            title = None if drop_title else strip_words(p.title, words) if words else p.title
            image = None if drop_image else p.image
            if title is None and image is None:
                excluded += 1  # nothing left to predict from under this condition
                continue
            p = replace(p, title=title, image=image)
        kept.append(p)
    cat.products = kept
    data, img_errors = encode_catalog(cat, ck.tokenizer, ck.preprocess, ck.classes, progress=progress,
                                      other_for=ck.meta.get("other_for", []), **sp)
    if split == "all":
        ev = np.arange(len(data))
        calib_file = ck.path / CALIBRATION
        if not calib_file.is_file():
            raise FileNotFoundError(f"{calib_file} is missing: evaluate the checkpoint on its own catalog first "
                                    "(attrx eval --checkpoint ... --catalog TRAINING_CATALOG) to calibrate thresholds")
        calib_saved = json.loads(calib_file.read_text())
        targets = calib_saved["precision_targets"]
        va = np.array([], dtype=int)
    else:
        va, ev = data.indices("val"), data.indices("test")
        if len(va) == 0 or len(ev) == 0:
            raise ValueError(f"{catalog}: the validation ({len(va)}) or test ({len(ev)}) split is empty; "
                             "for a catalog the model was not trained on, use --split all")
    p_eval, w_eval = predict(ck.model, data, ev)
    p_val = predict(ck.model, data, va)[0] if len(va) else None

    targets = sorted(float(t) for t in targets)
    calibration, results = {}, {}
    for j, a in enumerate(attrs):
        if split == "all":
            calibration[a] = calib_saved["thresholds"][a]
        else:
            y_val = data.labels[va, j]
            lab_val = y_val != IGNORE
            calibration[a] = M.calibrate(p_val[j][lab_val], y_val[lab_val], targets)
        y = data.labels[ev, j]
        lab = y != IGNORE
        pt, yt, wt = p_eval[j][lab], y[lab], w_eval[j][lab]
        prods = [data.products[i] for i in ev[lab]]
        both = np.array([p.title is not None and p.image is not None for p in prods], dtype=bool)
        unnamed = np.array([not _title_names(p.title, p.labels[a]) for p in prods], dtype=bool)
        seen = yt >= 0
        unseen_counts: dict[str, int] = {}
        for p, ok in zip(prods, seen, strict=True):
            if not ok:
                unseen_counts[p.labels[a]] = unseen_counts.get(p.labels[a], 0) + 1
        if split == "all":
            pos_ref = np.bincount(yt[seen], minlength=len(ck.classes[a]))
        else:
            y_val = data.labels[va, j]
            pos_ref = np.bincount(y_val[y_val >= 0], minlength=len(ck.classes[a]))
        results[a] = {
            "n_test": int(lab.sum()),
            "accuracy": M.accuracy(pt, yt),
            "macro_f1": M.macro_f1(pt, yt),
            "accuracy_title_lacks_label": M.accuracy(pt[unnamed], yt[unnamed]) if unnamed.any() else None,
            "n_title_lacks_label": int(unnamed.sum()),
            "mean_image_weight": float(wt[both, 1].mean()) if both.any() else None,
            # labels the model has no class for: counted wrong above, and listed here
            "unseen_labels": {"count": int((~seen).sum()),
                              "labels": dict(sorted(unseen_counts.items(), key=lambda kv: -kv[1])[:20])},
            "accuracy_seen_labels": M.accuracy(pt[seen], yt[seen]) if seen.any() else None,
            "recall_at_precision": {
                f"{t:.2f}": M.recall_report(pt, yt, calibration[a][f"{t:.2f}"], ck.classes[a], pos_ref, min_positives)
                for t in targets
            },
        }
        _plot(out / f"pr_{a}.png", a, pt, yt, calibration[a])
        results[a]["_image_weights"] = wt[both, 1]

    weights = {a: r.pop("_image_weights") for a, r in results.items()}
    np.savez_compressed(out / "image_weights.npz", **weights)  # per product, for comparisons across runs
    result = {
        "checkpoint": str(ck.path), "catalog": str(catalog), "split": split,
        "conditions": {"drop_title": drop_title, "drop_image": drop_image, "strip_label_words": list(strip_label_words),
                       "rows_excluded_nothing_left": excluded},
        "splits": {"val": int(len(va)), "test": int(len(ev))}, "rows_skipped": len(cat.errors) + len(img_errors),
        "precision_targets": targets, "attributes": results,
    }
    (out / METRICS).write_text(json.dumps(result, indent=2))
    if not custom:  # only the plain evaluation on the training catalog (re)calibrates the checkpoint
        (out / CALIBRATION).write_text(json.dumps({"precision_targets": targets, "thresholds": calibration}, indent=2))
    _print_table(result)
    if report:
        from training.report import write_report

        write_report(result, weights, Path(report), pr_dir=out)
    print(f"metrics: {out / METRICS}" + ("" if custom else f"; thresholds: {out / CALIBRATION}")
          + f"; plots: {out}/pr_*.png" + (f"; report: {report}/summary.md" if report else ""))
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
