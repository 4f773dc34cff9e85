"""Acceptance thresholds for target precisions, calibrated per attribute x situation x class.

Calibration rows are the validation split and its copies (training/evaluation/calibration_set.py). Each row is
decided as the bundle will decide it (attrx.service.contract.decisions: constrained decoding, the
folded class, title-image conflicts); thresholds apply to the confidence of the value answered, on
the rows that can be accepted at all. Group-conditional ("Mondrian") calibration:
- a situation with fewer than `min_situation_support` rows gets no thresholds: never accepted;
- in a situation, a class with at least `min_support` positives gets its own threshold, the lowest
  (most recall) at which the one-sided Clopper-Pearson lower bound of its precision, at
  `confidence`, still reaches the target; the other classes share one threshold calibrated the
  same way on the rows answered with any of them (none if those are too few).
The conflict check flags a confident title-only value that the image-only prediction all but rules
out; its bound is the highest that flags at most `CONFLICT_BUDGET` of the validation products whose
title names their own label (a budget that keeps coverage where the title is right).

Written to the checkpoint's calibration.json, with the per-class thresholds on the validation split
as it is (what bundles before situations carried); `attrx export` copies it into the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from attrx.service.contract.bundle import (
    AttributeSpec,
    ConflictSpec,
    FamilySpec,
    SituationSpec,
)
from attrx.service.contract.constraints import Constraints, RecordDecoder
from attrx.service.contract.decisions import AttributeRules, conflicts, decide, image_support
from attrx.service.contract.label_variants import matcher_words_of
from attrx.service.contract.situations import SITUATIONS
from attrx.training.data.encode import IGNORE, OTHER, Encoded
from attrx.training.evaluation import certify, metrics
from attrx.training.evaluation.calibration_set import COPIES, CalibrationSet, calibration_set
from attrx.training.evaluation.family_calibration import calibrate_families
from attrx.training.models.checkpoint import CALIBRATION

DEFAULT_TARGETS = (0.90, 0.95)
MIN_SUPPORT = 10
MIN_SITUATION_SUPPORT = 50
CONFIDENCE = 0.5
DELTA = certify.DELTA
TITLE_CONFIDENCE = 0.5
DELTA = certify.DELTA
CONFLICT_BUDGET = 0.01


def calibrate_probs(probs: list[np.ndarray], labels: np.ndarray, attrs: list[str], targets=DEFAULT_TARGETS, *,
                    min_support: int = MIN_SUPPORT, confidence: float = CONFIDENCE) -> dict:
    """The calibration.json document from validation probabilities [per attribute] and labels [N, A]."""
    targets = sorted(float(t) for t in targets)
    thresholds, support = {}, {}
    for j, a in enumerate(attrs):
        y = labels[:, j]
        lab = y != IGNORE
        thresholds[a] = metrics.calibrate(probs[j][lab], y[lab], targets, min_support=min_support, confidence=confidence)
        support[a] = np.bincount(y[y >= 0], minlength=probs[j].shape[1]).astype(int).tolist()
    return {"precision_targets": targets, "min_support": min_support, "confidence": confidence,
            "thresholds": thresholds, "support": support}


def conflict_check(cs: CalibrationSet, j: int, budget: float = CONFLICT_BUDGET,
                   useful_below: float = 0.9) -> ConflictSpec | None:
    """The image-probability bound below which a confident title-only value counts as contradicted,
    set so that at most `budget` of the validation products (with both) whose title names their own
    label are flagged. None without enough of them, or when the answers it would flag are right at
    least `useful_below` of the time on validation (the image-only head cannot tell there)."""
    named = (cs.copy == 0) & (cs.situations[:, j] == SITUATIONS.index("named+image"))
    own = named & cs.names_label[:, j]
    if own.sum() < MIN_SITUATION_SUPPORT:
        return None
    t, i = cs.outputs["text"][j], cs.outputs["image"][j]
    support = np.sort(image_support(t[own], i[own])[t[own].max(1) >= TITLE_CONFIDENCE])
    k = min(int(np.floor(budget * own.sum())), len(support))  # this many may be flagged
    if k == 0:
        return None
    rule = (TITLE_CONFIDENCE, float(support[k - 1]))
    flagged = named & conflicts(t, i, np.ones(len(t), dtype=bool), rule)
    right = cs.outputs["probs"][j].argmax(1) == cs.labels[:, j]
    if not flagged.any() or right[flagged].mean() >= useful_below:
        return None
    return ConflictSpec(min_title_confidence=rule[0], max_image_probability=rule[1],
                        flagged_named=round(float(flagged[own].mean()), 4),
                        flagged_precision=round(float(right[flagged].mean()), 4))


def _open_rules(classes: dict[str, list[str]], conflict: dict[str, ConflictSpec | None]) -> list[AttributeRules]:
    """Rules that accept everything that needs no review (threshold 0): what the thresholds are fitted on."""
    return [AttributeRules(a, cl, {"open": np.zeros((len(SITUATIONS), len(cl)))},
                           cl.index(OTHER) if OTHER in cl else -1,
                           (conflict[a].min_title_confidence, conflict[a].max_image_probability)
                           if conflict[a] else None) for a, cl in classes.items()]


def calibrate_situations(cs: CalibrationSet, classes: dict[str, list[str]], constraints: Constraints | None,
                         targets=DEFAULT_TARGETS, *, min_support: int = MIN_SUPPORT, confidence: float = CONFIDENCE,
                         min_situation_support: int = MIN_SITUATION_SUPPORT, delta: float | None = DELTA) -> dict:
    """{"situations": {attr: {situation: SituationSpec}}, "conflict": {attr: ConflictSpec}}. delta:
    certified thresholds (training/evaluation/certify.py), and a situation under min_situation_support
    leans on its attribute's thresholds where its own rows do not contradict them; None: the
    one-sided bound at `confidence` (the rule before certification), small situations never accepted."""
    attrs = list(classes)
    conflict = {a: conflict_check(cs, j) for j, a in enumerate(attrs)}
    d = decide(_open_rules(classes, conflict), RecordDecoder(classes, constraints), cs.outputs["probs"],
               cs.situations, "open", cs.outputs["text"], cs.outputs["image"])
    rule = {"targets": sorted(targets), "min_support": min_support, "confidence": confidence, "delta": delta}
    situations = {}
    for j, a in enumerate(attrs):
        situations[a] = {}
        lab = cs.labels[:, j]
        known = cs.counts[:, j] & (lab != IGNORE)
        parent = None
        for k, name in enumerate(SITUATIONS):
            rows = known & (cs.situations[:, j] == k)
            if not rows.any() or (delta is None and rows.sum() < min_situation_support):
                continue  # no support: never accepted
            if rows.sum() >= min_situation_support:
                ths, by = _thresholds(d, j, rows, lab, len(classes[a]), rule), "situation"
            else:
                parent = parent if parent is not None else _thresholds(d, j, known, lab, len(classes[a]), rule)
                ths, by = _lean_on(parent, d, j, rows, lab, delta), "attribute"
            situations[a][name] = SituationSpec(
                support=int(rows.sum()), natural=int((rows & (cs.copy == 0)).sum()),
                class_support=np.bincount(lab[rows & (lab >= 0)], minlength=len(classes[a])).tolist(),
                thresholds=ths, certified_by=by if delta is not None and _any(ths) else None,
                more_needed=None if delta is None else _more_needed(d, j, rows, lab, ths, delta))
    return {"situations": {a: {k: v.model_dump() for k, v in s.items()} for a, s in situations.items()},
            "conflict": {a: (c.model_dump() if c else None) for a, c in conflict.items()}}


def _any(ths: dict) -> bool:
    return any(t is not None for v in ths.values() for t in v)


def _thresholds(d, j: int, rows: np.ndarray, lab: np.ndarray, n_classes: int, rule: dict) -> dict:
    ok = rows & d.accepted[j]
    return metrics.class_thresholds(d.confidence[j][ok], d.value[j][ok], lab[ok], n_classes, rule["targets"],
                                    rule["min_support"], rule["confidence"], rule["delta"])


def _lean_on(parent: dict, d, j: int, rows: np.ndarray, lab: np.ndarray, delta: float) -> dict:
    """The attribute's thresholds for a small situation, per target, unless the situation's own rows
    accepted at them say its precision is below the target."""
    ok = rows & d.accepted[j]
    out = {}
    for key, ths in parent.items():
        thr = np.array([np.nan if t is None else t for t in ths])[d.value[j][ok]]
        acc = d.confidence[j][ok] >= thr
        right = (d.value[j][ok] == lab[ok])[acc]
        bad = certify.contradicts(int(right.sum()), int(acc.sum()), float(key), delta)
        out[key] = [None] * len(ths) if bad else list(ths)
    return out


def _more_needed(d, j: int, rows: np.ndarray, lab: np.ndarray, ths: dict, delta: float) -> dict:
    """Per target, how many more reviewed products at the situation's current error rate would
    certify it: 0 when some class is certified, None when its best precision does not beat the target."""
    ok = rows & d.accepted[j]
    conf, right = d.confidence[j][ok], d.value[j][ok] == lab[ok]
    out = {}
    for key, v in ths.items():
        if any(t is not None for t in v):
            out[key] = 0
            continue
        best = metrics.recall_at_precision(conf, right, float(key), 0.0)
        m = int((conf >= best.threshold).sum()) if best.threshold is not None else 0
        k = int((right & (conf >= best.threshold)).sum()) if m else 0
        out[key] = certify.reviews_to_certify(k, m, float(key), delta) if m else None
    return out


def calibrate_checkpoint(path: str | Path | None, model, data: Encoded, va: np.ndarray, classes: dict[str, list[str]],
                         tok, label_words: dict[str, list[str]], constraints: Constraints | None,
                         targets=DEFAULT_TARGETS, *, min_support: int = MIN_SUPPORT,
                         confidence: float = CONFIDENCE, features=None, variants: dict | None = None,
                         families: tuple[dict, bool] = ({}, True), delta: float | None = DELTA) -> dict:
    """Calibrate on the validation rows va and their copies; writes calibration.json into path (if
    given). label_words: each attribute's labels; variants: how titles spell them (the matcher
    matches both); families: a declared hierarchy {attr: {value: family}} and whether attrx's colour
    families apply to the other attributes (family_calibration.read_declared). `features`: a locked tower's stored outputs for va (training/data/features.py), or None."""
    variants = variants or {}
    label_words = matcher_words_of(label_words, variants)
    cs = calibration_set(model, data, va, tok, label_words, features=features, variants=variants)
    nat = cs.copy == 0
    doc = calibrate_probs([p[nat] for p in cs.outputs["probs"]], cs.labels[nat], list(classes), targets,
                          min_support=min_support, confidence=confidence)
    doc.update(calibrate_situations(cs, classes, constraints, targets, min_support=min_support,
                                    confidence=confidence, delta=delta))
    doc["families"] = calibrate_families(
        cs, classes, constraints, {a: {k: SituationSpec.model_validate(v) for k, v in s.items()}
                                   for a, s in doc["situations"].items()},
        {a: ConflictSpec.model_validate(c) if c else None for a, c in doc["conflict"].items()}, families[0], targets,
        min_support=min_support, confidence=confidence, min_situation_support=MIN_SITUATION_SUPPORT,
        use_default=families[1], delta=delta)
    doc.update({"label_words": label_words, "label_variants": variants, "constraints": constraints.model_dump() if constraints else None,
                "folded_class": {a: (OTHER if OTHER in cl else None) for a, cl in classes.items()},
                "min_situation_support": MIN_SITUATION_SUPPORT, "delta": delta,
                "rows": {c: int((cs.copy == i).sum()) for i, c in enumerate(COPIES)}})
    if path is not None:
        (Path(path) / CALIBRATION).write_text(json.dumps(doc, indent=1))
    return doc


def attribute_specs(calib: dict, classes: dict[str, list[str]]) -> list[AttributeSpec]:
    """The manifest's attribute entries from a calibration.json (one from before situations has
    per-class thresholds only: its bundle is not situation-calibrated)."""
    specs = []
    for a, cl in classes.items():
        sits = calib.get("situations", {}).get(a)
        conflict = (calib.get("conflict") or {}).get(a)
        specs.append(AttributeSpec(
            name=a, classes=cl, thresholds=calib["thresholds"][a], support=calib.get("support", {}).get(a),
            min_support=calib.get("min_support"), label_words=(calib.get("label_words") or {}).get(a),
            label_variants=(calib.get("label_variants") or {}).get(a) or None,
            situations=None if sits is None else {k: SituationSpec.model_validate(v) for k, v in sits.items()},
            conflict=None if conflict is None else ConflictSpec.model_validate(conflict),
            folded_class=(calib.get("folded_class") or {}).get(a),
            families=FamilySpec.model_validate(calib["families"][a]) if (calib.get("families") or {}).get(a) else None))
    return specs


def decision_rules(calib: dict, classes: dict[str, list[str]], full: bool = True):
    """The decision rules a bundle exported from this calibration would carry (for `attrx eval`);
    full=False: as `attrx serve` with ATTRX_DECISIONS=plain (per-class thresholds everywhere)."""
    from types import SimpleNamespace

    from attrx.service.contract.decisions import rules_from_manifest

    cons = calib.get("constraints")
    manifest = SimpleNamespace(attributes=attribute_specs(calib, classes), precision_targets=calib["precision_targets"],
                               model=SimpleNamespace(unimodal=True),
                               constraints=Constraints.model_validate(cons) if cons else None)
    return rules_from_manifest(manifest, situations=full, conflicts=full, constraints=full)
