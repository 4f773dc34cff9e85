"""`attrx eval`: per attribute, condition and situation, what is answered and what can be relied on.

Thresholds are calibrated on the validation split and its copies (per situation) and every figure is
on the test split (both from the deterministic id-hash split recorded in the checkpoint). Answers
are decided as the bundle decides them (attrx.service.contract.decisions): constraints, situations,
conflicts. Writes metrics.json, calibration.json (read by `attrx export`; only the plain evaluation
writes it), a precision-recall plot and a precision-coverage plot per situation for each attribute.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from attrx.service.catalog.reader import read_catalog
from attrx.service.contract.decisions import decide, situation_index
from attrx.service.contract.label_variants import LabelSpellings, matcher_words_of
from attrx.service.contract.situations import (
    SITUATIONS,
    SituationReader,
    label_pattern,
    strip_pattern,
)
from attrx.training.data.encode import IGNORE, encode_catalog_on_disk, split_of
from attrx.training.data.loader import default_threads
from attrx.training.data.variant_learning import read_variants
from attrx.training.evaluation import metrics, situation_report
from attrx.training.evaluation.calibration import (
    CONFIDENCE,
    DEFAULT_TARGETS,
    DELTA,
    MIN_SUPPORT,
    calibrate_checkpoint,
    decision_rules,
)
from attrx.training.evaluation.concept_report import concept_report
from attrx.training.evaluation.constraint_learning import (
    learn_constraints,
    read_constraints,
    write_constraints,
)
from attrx.training.evaluation.family_calibration import read_declared
from attrx.training.evaluation.label_noise import duplicate_disagreement
from attrx.training.evaluation.plots import plot_pr, plot_situations
from attrx.training.evaluation.predict import predict_outputs
from attrx.training.models.checkpoint import CALIBRATION, METRICS, load_checkpoint


def _check_condition(ck, split: str, drop_title: bool, drop_image: bool, strip_label_words) -> None:
    """Refuse conditions that leave nothing to read, and say when one changes nothing."""
    if split not in ("test", "all"):
        raise ValueError(f"split must be 'test' or 'all', got {split!r}")
    if drop_title and drop_image:
        raise ValueError("--drop-title and --drop-image together leave nothing to predict from")
    unknown = [a for a in strip_label_words if a not in ck.classes and a != "all"]
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
    if "all" in strip_label_words:
        strip_label_words = ck.attributes
    matcher = matcher_of(ck)[0]
    pattern = label_pattern([w for a in strip_label_words for w in matcher[a]])
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


def _constraints(ck, train_products, write: bool):
    """The checkpoint's constraints; a checkpoint from before them learns them from the training split."""
    c = read_constraints(ck.path)
    if c is None and train_products:
        c = learn_constraints(train_products, ck.classes)
        if write:
            write_constraints(ck.path, c)
    return c


def _calibration(ck, data, va, train_products, custom: bool, out: Path, targets, min_support, confidence,
                 delta: float | None = DELTA) -> dict:
    """The plain evaluation calibrates (and writes calibration.json into out); a condition or another
    catalog uses the checkpoint's, unless it is from before situations (then it is recalibrated
    in memory, on the validation rows)."""
    f = ck.path / CALIBRATION
    if custom and f.is_file():
        calib = json.loads(f.read_text())
        if "situations" in calib or len(va) == 0:
            return calib
    if custom and len(va) == 0:
        raise FileNotFoundError(f"{f} is missing: `attrx train` writes it; for an older checkpoint, evaluate it on "
                                "its own catalog first (attrx eval --checkpoint ... --catalog TRAINING_CATALOG)")
    label_words = ck.meta.get("label_words") or {a: list(c) for a, c in ck.classes.items()}
    label_words = {a: label_words.get(a) or list(ck.classes[a]) for a in ck.attributes}
    return calibrate_checkpoint(None if custom else out, ck.model, data, va, ck.classes, ck.tokenizer,
                                label_words, _constraints(ck, train_products, write=not custom and out == ck.path), targets,
                                min_support=min_support, confidence=confidence, variants=read_variants(ck.path),
                                families=read_declared(ck.path), delta=delta)


def matcher_of(ck) -> tuple[dict[str, list[str]], dict]:
    """A checkpoint's matcher words per attribute (its labels and their variants, as edited in its
    label_variants.json) and the variants."""
    label_words = ck.meta.get("label_words") or {}
    variants = read_variants(ck.path) or {}
    return matcher_words_of({a: label_words.get(a) or list(ck.classes[a]) for a in ck.attributes}, variants), variants


def _situations(ck, prods, calib: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per evaluated product and attribute: its situation, and what its title says (title groups)."""
    words = calib.get("label_words") or {a: list(c) for a, c in ck.classes.items()}
    reader = SituationReader({a: words.get(a) or ck.classes[a] for a in ck.attributes})
    n, k = len(prods), len(ck.attributes)
    sits = np.array([situation_index(reader.read(p.title, p.image is not None)) for p in prods],
                    dtype=np.int64).reshape(n, k)
    spell = spellings_of(ck.attributes, calib)
    groups = np.stack([situation_report.title_groups([p.title for p in prods], [p.labels.get(a) for p in prods], pt,
                                                     spell[a])
                       for a, pt in zip(ck.attributes, reader.patterns, strict=True)], 1).reshape(n, k)
    return sits, groups


def spellings_of(attrs, calib: dict) -> dict[str, LabelSpellings]:
    """How titles spell each attribute's labels, as calibrated (none: the labels themselves)."""
    variants = calib.get("label_variants") or {}
    return {a: LabelSpellings(list(variants.get(a, {})), variants.get(a)) for a in attrs}


def _attribute_result(ck, a: str, j: int, labels, prods, outs, decisions, where, calib: dict, min_positives: int):
    """where: (situations [N, A], title groups [N, A]) of the evaluated products."""
    y = labels[:, j]
    lab = y != IGNORE
    pt, yt, wt = outs["probs"][j][lab], y[lab], outs["weights"][j][lab]
    lp = [p for p, k in zip(prods, lab, strict=True) if k]
    both = np.array([p.title is not None and p.image is not None for p in lp], dtype=bool)
    spell = spellings_of([a], calib)[a]
    unnamed = np.array([not spell.names(p.title, p.labels[a]) for p in lp], dtype=bool)
    seen = yt >= 0
    answered = next(iter(decisions.values())).value[j][lab]
    unseen_counts: dict[str, int] = {}
    for p, ok in zip(lp, seen, strict=True):
        if not ok:
            unseen_counts[p.labels[a]] = unseen_counts.get(p.labels[a], 0) + 1
    support = np.asarray(calib["support"][a])
    ths = calib["thresholds"][a]
    right = answered == yt
    return {
        "n_test": int(lab.sum()),
        "accuracy": float(right.mean()) if len(yt) else None,  # the answered value (after constraints)
        "accuracy_argmax": metrics.accuracy(pt, yt),  # each attribute's own argmax
        "macro_f1": metrics.macro_f1(pt, yt),
        "accuracy_title_lacks_label": float(right[unnamed].mean()) if unnamed.any() else None,
        "n_title_lacks_label": int(unnamed.sum()),
        "mean_image_weight": float(wt[both, 1].mean()) if both.any() else None,
        # labels the model has no class for: counted wrong above, and listed here
        "unseen_labels": {"count": int((~seen).sum()),
                          "labels": dict(sorted(unseen_counts.items(), key=lambda kv: -kv[1])[:20])},
        "accuracy_seen_labels": float(right[seen].mean()) if seen.any() else None,
        # recall at the per-class thresholds on the validation split as it is (bundles before situations)
        "recall_at_precision": {t: metrics.recall_report(pt, yt, ths[t], ck.classes[a], support, min_positives)
                                for t in ths},
        # what a user gets at each target, as served: precision of the accepted answers, and how many
        "accepted_precision": {k: situation_report.accepted_stats(right, d.accepted[j][lab])
                               for k, d in decisions.items()},
        **situation_report.attribute_report(y, where[0][:, j], where[1][:, j], decisions, j,
                                            _family_of(calib, a)),
    }, wt[both, 1], (unnamed & both)


def _family_of(calib: dict, a: str) -> np.ndarray | None:
    fam = (calib.get("families") or {}).get(a)
    return None if not fam else np.asarray(fam["of_class"])


def _prepare_rows(ck, catalog, split: str, drop_title: bool, drop_image: bool, strip_label_words, out: Path,
                  progress: bool):
    """(encoded rows, rows skipped, rows excluded, training products)."""
    sp = ck.meta.get("split", {})
    cat = read_catalog(catalog, ck.attributes)
    train_products = [p for p in cat.products if split_of(p.id, **sp) == "train"] if split == "test" else []
    cat.products, excluded = _conditioned_products(ck, cat, split, sp, drop_title, drop_image, strip_label_words)
    if split == "test":  # only the validation and test rows are decoded: no image of the training split
        cat.products = [p for p in cat.products if split_of(p.id, **sp) != "train"]
    # decoded images in a disk store (as attrx train): memory does not grow with the catalog
    data, img_errors, _ = encode_catalog_on_disk(cat, ck.tokenizer, ck.preprocess, ck.classes, progress=progress,
                                                 catalog_file=cat.path, scratch=out,
                                                 workers=max(0, default_threads() - 1),
                                                 other_for=ck.meta.get("other_for", []), **sp)
    return data, len(cat.errors) + len(img_errors), excluded, train_products


def _decide(ck, calib: dict, outs: dict, sits: np.ndarray, decisions: str) -> dict:
    rules, decoder = decision_rules(calib, ck.classes, full=decisions == "full")
    return {k: decide(rules, decoder, outs["probs"], sits, k, outs["text"], outs["image"])
            for k in (f"{t:.2f}" for t in calib["precision_targets"])}


def _records(ck, labels: np.ndarray, decisions: dict, train_products) -> dict:
    """Per target, the record metrics of the answers (pairs checked: those the training split ties)."""
    attrs = ck.attributes
    chosen = np.stack(next(iter(decisions.values())).value, 1)
    values = [[ck.classes[a][c] for a, c in zip(attrs, row, strict=True)] for row in chosen]

    def value(p, a):
        v = p.labels.get(a)
        return v if v in ck.classes[a] else ("other" if v and "other" in ck.classes[a] else None)

    train_values = [{a: value(p, a) for a in attrs} for p in train_products]
    pairs = {}
    for g in learn_constraints(train_products, ck.classes).groups:
        pairs.update(situation_report.seen_pairs(train_values, g.attributes))
    return {k: situation_report.record_report(values, labels, chosen, np.stack(d.accepted, 1), attrs, pairs)
            for k, d in decisions.items()}


def _out_dir(ck, catalog, out, split, drop_title, drop_image, strip_label_words, custom: bool) -> Path:
    if out is None:
        tag = "-".join(["all" if split == "all" else "test", Path(catalog).stem]
                       + (["no-title"] if drop_title else []) + (["no-image"] if drop_image else [])
                       + [f"no-{a}-words" for a in strip_label_words])
        out = ck.path / "eval" / tag if custom else ck.path
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def evaluate(checkpoint: str | Path, catalog: str | Path, *, out: str | Path | None = None,
             targets: list[float] = DEFAULT_TARGETS, min_positives: int = 5, progress: bool = True,
             split: str = "test", drop_title: bool = False, drop_image: bool = False,
             strip_label_words: list[str] = (), report: str | Path | None = None,
             min_support: int = MIN_SUPPORT, confidence: float = CONFIDENCE, decisions: str = "full",
             delta: float | None = DELTA) -> dict:
    """split="test": thresholds (re)calibrated on the checkpoint's validation split and its copies,
    figures on its test split (the catalog it was trained on). split="all": every row of any catalog
    with the same attribute columns, at the thresholds the checkpoint carries. drop_title / drop_image
    / strip_label_words ("all": every attribute's) change the evaluated rows only (test conditions).
    decisions="plain" answers as a bundle without situations, conflicts or constraints would."""
    ck = load_checkpoint(checkpoint)
    _check_condition(ck, split, drop_title, drop_image, strip_label_words)
    custom = bool(drop_title or drop_image or strip_label_words) or split == "all"
    out = _out_dir(ck, catalog, out, split, drop_title, drop_image, strip_label_words, custom)
    data, skipped, excluded, train_products = _prepare_rows(ck, catalog, split, drop_title, drop_image,
                                                            strip_label_words, out, progress)
    va, ev = data.indices("val"), data.indices("test")
    if split == "all":
        va, ev = np.array([], dtype=int), np.arange(len(data))
    elif len(va) == 0 or len(ev) == 0:
        raise ValueError(f"{catalog}: the validation ({len(va)}) or test ({len(ev)}) split is empty; "
                         "for a catalog the model was not trained on, use --split all")
    calib = _calibration(ck, data, va, train_products, custom, out, targets, min_support, confidence, delta)
    outs = predict_outputs(ck.model, data, ev)
    concepts = concept_report(ck.model, ck.tokenizer, data, ev, ck.attributes, ck.classes, out)
    (out / ".images.f32").unlink(missing_ok=True)  # the pixels are no longer needed
    prods = [data.products[i] for i in ev]
    where = _situations(ck, prods, calib)
    answers = _decide(ck, calib, outs, where[0], decisions)
    results, weights, lacks = {}, {}, {}
    for j, a in enumerate(ck.attributes):
        results[a], weights[a], lacks[a] = _attribute_result(ck, a, j, data.labels[ev], prods, outs, answers,
                                                             where, calib, min_positives)
        plot_pr(out / f"pr_{a}.png", a, outs["probs"][j], data.labels[ev, j], calib["thresholds"][a])
        plot_situations(out / f"situations_{a}.png", a, outs["probs"][j], data.labels[ev, j], where[0][:, j],
                        answers, j)
    np.savez_compressed(out / "image_weights.npz", **weights)  # per product, for comparisons across runs
    np.savez_compressed(out / "title_lacks_label.npz", **lacks)
    result = {
        "checkpoint": str(ck.path), "catalog": str(catalog), "split": split,
        "conditions": {"drop_title": drop_title, "drop_image": drop_image, "strip_label_words": list(strip_label_words),
                       "rows_excluded_nothing_left": excluded},
        "splits": {"val": int(len(va)), "test": int(len(ev))}, "rows_skipped": skipped,
        "precision_targets": calib["precision_targets"],
        "calibration": {k: calib.get(k) for k in ("min_support", "confidence", "min_situation_support", "rows", "delta")},
        # per attribute and situation: which rows certified its thresholds, and how many more reviewed
        # products at its current error rate would certify each target (0: certified; None: cannot)
        "certification": {a: {sit: {"certified_by": v.get("certified_by"), "more_needed": v.get("more_needed")}
                              for sit, v in sits.items()} for a, sits in (calib.get("situations") or {}).items()},
        "situation_calibrated": "situations" in calib, "decisions": decisions, "output": str(out),
        "records": _records(ck, data.labels[ev], answers, train_products) if train_products else None,
        # the catalog's own noise: exact-duplicate images labelled otherwise (the plain evaluation only)
        "label_noise": None if custom else duplicate_disagreement([*train_products, *data.products], ck.attributes),
        "attributes": results,
        **({"concepts": concepts} if concepts else {}),
    }
    (out / METRICS).write_text(json.dumps(result, indent=2))
    _print_table(result)
    if report:
        from attrx.training.evaluation.report import write_report

        write_report(result, weights, Path(report), pr_dir=out)
    print(f"metrics: {out / METRICS}" + ("" if custom else f"; thresholds: {out / CALIBRATION}")
          + f"; plots: {out}/pr_*.png, {out}/situations_*.png" + (f"; report: {report}/summary.md" if report else ""))
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


    key = targets[0]
    sits = [s for s in SITUATIONS if any(s in r["situations"] for r in result["attributes"].values())]
    print(f"\naccepted at P>={key} per situation: precision (coverage, products)")
    rows = [["attribute", *sits]]
    for a, r in result["attributes"].items():
        cells = []
        for s in sits:
            x = r["situations"].get(s)
            st = x["accepted"][key] if x else None
            cells.append("-" if st is None else f"{_fmt(st['precision'])} ({st['coverage']:.0%}, {x['n']})")
        rows.append([a, *cells])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    rec = (result.get("records") or {}).get(key)
    if rec:
        print(f"records: whole-record accuracy {_fmt(rec['whole_record_accuracy'])}, combinations never seen in "
              f"training {rec['unseen_combinations_per_1000']} per 1,000, `other` answered {rec['other_answered']} "
              f"and accepted {rec['other_accepted']} times")
