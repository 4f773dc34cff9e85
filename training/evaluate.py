"""`attrx eval`: per-attribute accuracy, macro-F1 and recall@precision; per-class thresholds.

Thresholds are calibrated on the validation split and recall is reported on the test split
(both come from the deterministic id-hash split recorded in the checkpoint). Writes
metrics.json, calibration.json (read by `attrx export`) and one precision-recall plot per attribute.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from attrx.service.catalog.reader import read_catalog
from attrx.training import metrics
from attrx.training.augment import label_pattern, names_label, strip_pattern, strip_words  # noqa: F401 (re-export)
from attrx.training.calibration import CONFIDENCE, DEFAULT_TARGETS, MIN_SUPPORT, calibrate_probs
from attrx.training.checkpoint import CALIBRATION, METRICS, load_checkpoint
from attrx.training.data import IGNORE, encode_catalog_on_disk, split_of
from attrx.training.device import default_threads
from attrx.training.predict import predict_probs


def _check_condition(ck, split: str, drop_title: bool, drop_image: bool, strip_label_words) -> None:
    """Refuse conditions that leave nothing to read, and say when one changes nothing."""
    if split not in ("test", "all"):
        raise ValueError(f"split must be 'test' or 'all', got {split!r}")
    if drop_title and drop_image:
        raise ValueError("--drop-title and --drop-image together leave nothing to predict from")
    unknown = [a for a in strip_label_words if a not in ck.classes]
    if unknown:
        raise ValueError(f"--strip-label-words {unknown}: the model has no such attribute ({', '.join(ck.attributes)})")
    inputs = getattr(ck.model_config, "inputs", "both")
    if (inputs == "image" and drop_image) or (inputs == "text" and drop_title):
        what = "images" if inputs == "image" else "titles"
        raise ValueError(f"this model reads only {what} (--inputs {inputs}); --drop-{what[:-1]} leaves it nothing "
                         "to predict from")
    if inputs == "image" and (drop_title or strip_label_words):
        print("warning: this model reads only images (--inputs image): changing the titles changes nothing, "
              "these figures repeat the plain evaluation", flush=True)
    if inputs == "text" and drop_image:
        print("warning: this model reads only titles (--inputs text): dropping images changes nothing", flush=True)


def _conditioned_products(ck, cat, split: str, sp: dict, drop_title: bool, drop_image: bool,
                          strip_label_words) -> tuple[list, int]:
    """The evaluated rows with the test condition applied (title dropped or stripped, image dropped)."""
    words = [w for a in strip_label_words for w in (ck.meta.get("label_words", {}).get(a) or ck.classes[a])]
    pattern = label_pattern(words)
    kept, excluded = [], 0
    for p in cat.products:
        if (drop_title or drop_image or strip_label_words) and (split == "all" or split_of(p.id, **sp) == "test"):
            title = None if drop_title else strip_pattern(p.title, pattern)
            image = None if drop_image else p.image
            if title is None and image is None:
                excluded += 1  # nothing left to predict from under this condition
                continue
            p = replace(p, title=title, image=image)
        kept.append(p)
    return kept, excluded


def _load_calibration(ck) -> dict:
    f = ck.path / CALIBRATION
    if not f.is_file():
        raise FileNotFoundError(f"{f} is missing: `attrx train` writes it; for an older checkpoint, evaluate it on "
                                "its own catalog first (attrx eval --checkpoint ... --catalog TRAINING_CATALOG)")
    return json.loads(f.read_text())


def _attribute_result(ck, a: str, j: int, data, ev, p_eval, w_eval, calib: dict, min_positives: int, out: Path):
    y = data.labels[ev, j]
    lab = y != IGNORE
    pt, yt, wt = p_eval[j][lab], y[lab], w_eval[j][lab]
    prods = [data.products[i] for i in ev[lab]]
    both = np.array([p.title is not None and p.image is not None for p in prods], dtype=bool)
    unnamed = np.array([not names_label(p.title, p.labels[a]) for p in prods], dtype=bool)
    seen = yt >= 0
    unseen_counts: dict[str, int] = {}
    for p, ok in zip(prods, seen, strict=True):
        if not ok:
            unseen_counts[p.labels[a]] = unseen_counts.get(p.labels[a], 0) + 1
    # the classes counted in recall@precision: enough validation positives (the calibration's
    # support) and enough positives in the evaluated rows, whichever split is evaluated
    if "support" in calib:
        support = np.asarray(calib["support"][a])
    else:  # a calibration.json from before supports were recorded: count the evaluated catalog's val split
        y_val = data.labels[data.indices("val"), j]
        support = np.bincount(y_val[y_val >= 0], minlength=len(ck.classes[a]))
    ths = calib["thresholds"][a]
    _plot(out / f"pr_{a}.png", a, pt, yt, ths)
    return {
        "n_test": int(lab.sum()),
        "accuracy": metrics.accuracy(pt, yt),
        "macro_f1": metrics.macro_f1(pt, yt),
        "accuracy_title_lacks_label": metrics.accuracy(pt[unnamed], yt[unnamed]) if unnamed.any() else None,
        "n_title_lacks_label": int(unnamed.sum()),
        "mean_image_weight": float(wt[both, 1].mean()) if both.any() else None,
        # labels the model has no class for: counted wrong above, and listed here
        "unseen_labels": {"count": int((~seen).sum()),
                          "labels": dict(sorted(unseen_counts.items(), key=lambda kv: -kv[1])[:20])},
        "accuracy_seen_labels": metrics.accuracy(pt[seen], yt[seen]) if seen.any() else None,
        "recall_at_precision": {t: metrics.recall_report(pt, yt, ths[t], ck.classes[a], support, min_positives)
                                for t in ths},
        # what a user gets at each target: precision of the accepted predictions, and how many
        "accepted_precision": {t: metrics.accepted_precision(pt, yt, ths[t], ck.classes[a]) for t in ths},
    }, wt[both, 1], (unnamed & both)


def evaluate(checkpoint: str | Path, catalog: str | Path, *, out: str | Path | None = None,
             targets: list[float] = DEFAULT_TARGETS, min_positives: int = 5, progress: bool = True,
             split: str = "test", drop_title: bool = False, drop_image: bool = False,
             strip_label_words: list[str] = (), report: str | Path | None = None,
             min_support: int = MIN_SUPPORT, confidence: float = CONFIDENCE) -> dict:
    """split="test": thresholds (re)calibrated on the checkpoint's validation split, figures on its
    test split (the catalog it was trained on). split="all": every row of any catalog with the same
    attribute columns, at the thresholds the checkpoint carries. drop_title / drop_image /
    strip_label_words change the evaluated rows only (test conditions)."""
    ck = load_checkpoint(checkpoint)
    attrs = ck.attributes
    _check_condition(ck, split, drop_title, drop_image, strip_label_words)
    custom = bool(drop_title or drop_image or strip_label_words) or split == "all"
    if out is None:
        tag = "-".join(["all" if split == "all" else "test", Path(catalog).stem]
                       + (["no-title"] if drop_title else []) + (["no-image"] if drop_image else [])
                       + [f"no-{a}-words" for a in strip_label_words])
        out = ck.path / "eval" / tag if custom else ck.path
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    calib = _load_calibration(ck) if split == "all" else None
    sp = ck.meta.get("split", {})
    cat = read_catalog(catalog, attrs)
    cat.products, excluded = _conditioned_products(ck, cat, split, sp, drop_title, drop_image, strip_label_words)
    if split == "test":  # only the validation and test rows are read: no image of the training split is decoded
        cat.products = [p for p in cat.products if split_of(p.id, **sp) != "train"]
    # decoded images in a disk store (as attrx train): memory does not grow with the catalog
    data, img_errors, _ = encode_catalog_on_disk(cat, ck.tokenizer, ck.preprocess, ck.classes, progress=progress,
                                                 catalog_file=Path(catalog), scratch=out,
                                                 workers=max(0, default_threads() - 1),
                                                 other_for=ck.meta.get("other_for", []), **sp)
    va, ev = data.indices("val"), data.indices("test")
    if split == "all":
        va, ev = np.array([], dtype=int), np.arange(len(data))
    elif len(va) == 0 or len(ev) == 0:
        raise ValueError(f"{catalog}: the validation ({len(va)}) or test ({len(ev)}) split is empty; "
                         "for a catalog the model was not trained on, use --split all")
    if calib is None:
        calib = calibrate_probs(predict_probs(ck.model, data, va)[0], data.labels[va], attrs, targets,
                                min_support=min_support, confidence=confidence)
    p_eval, w_eval = predict_probs(ck.model, data, ev)
    (out / ".images.f32").unlink(missing_ok=True)  # the pixels are no longer needed
    results, weights, lacks = {}, {}, {}
    for j, a in enumerate(attrs):
        results[a], weights[a], lacks[a] = _attribute_result(ck, a, j, data, ev, p_eval, w_eval, calib,
                                                             min_positives, out)
    np.savez_compressed(out / "image_weights.npz", **weights)  # per product, for comparisons across runs
    np.savez_compressed(out / "title_lacks_label.npz", **lacks)
    result = {
        "checkpoint": str(ck.path), "catalog": str(catalog), "split": split,
        "conditions": {"drop_title": drop_title, "drop_image": drop_image, "strip_label_words": list(strip_label_words),
                       "rows_excluded_nothing_left": excluded},
        "splits": {"val": int(len(va)), "test": int(len(ev))}, "rows_skipped": len(cat.errors) + len(img_errors),
        "precision_targets": calib["precision_targets"], "calibration": {k: calib.get(k) for k in
                                                                         ("min_support", "confidence")},
        "attributes": results,
    }
    (out / METRICS).write_text(json.dumps(result, indent=2))
    if not custom:  # only the plain evaluation on the training catalog (re)calibrates the checkpoint
        (out / CALIBRATION).write_text(json.dumps(calib, indent=2))
    _print_table(result)
    if report:
        from attrx.training.report import write_report

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
    head = (["attribute", "acc", "macroF1", "acc(title lacks)", "λ_image"] + [f"R@P{t}" for t in targets]
            + [f"P(accepted)@{t}" for t in targets])
    rows = [head]
    for a, r in result["attributes"].items():
        rap = [r["recall_at_precision"][t] for t in targets]
        acc = [r["accepted_precision"][t] for t in targets]
        rows.append([a, _fmt(r["accuracy"]), _fmt(r["macro_f1"]), _fmt(r["accuracy_title_lacks_label"]),
                     _fmt(r["mean_image_weight"])]
                    + [f"{_fmt(x['macro_recall'])} ({x['classes_counted']} cls)" for x in rap]
                    + [f"{_fmt(x['precision'])} ({x['coverage']:.0%} kept)" for x in acc])
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
