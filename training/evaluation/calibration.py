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

from attrx.service.contract.bundle import AttributeSpec, ConflictSpec, SituationSpec, precision_key
from attrx.service.contract.constraints import Constraints, RecordDecoder
from attrx.service.contract.decisions import AttributeRules, conflicts, decide, image_support
from attrx.service.contract.label_variants import matcher_words_of
from attrx.service.contract.situations import SITUATIONS
from attrx.training.data.encode import IGNORE, OTHER, Encoded
from attrx.training.evaluation import metrics
from attrx.training.evaluation.calibration_set import COPIES, CalibrationSet, calibration_set
from attrx.training.models.checkpoint import CALIBRATION

DEFAULT_TARGETS = (0.90, 0.95)
MIN_SUPPORT = 10
MIN_SITUATION_SUPPORT = 50
MIN_POOL = 10  # the shared threshold of the classes without their own needs this many answers
CONFIDENCE = 0.5
TITLE_CONFIDENCE = 0.5
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


def _class_thresholds(conf, value, label, n_classes: int, targets, min_support: int, confidence: float) -> dict:
    """Per target, one threshold per class for the acceptable rows of one situation."""
    support = np.bincount(label[label >= 0], minlength=n_classes)
    own = support >= max(1, min_support)
    rare = ~own[value]
    out = {}
    for t in targets:
        ths: list[float | None] = [None] * n_classes
        for c in np.flatnonzero(own):
            ths[c] = metrics.recall_at_precision(np.where(value == c, conf, -np.inf), label == c, t,
                                                 confidence).threshold
        if rare.sum() >= MIN_POOL:
            shared = metrics.recall_at_precision(np.where(rare, conf, -np.inf), rare & (value == label), t,
                                                 confidence).threshold
            for c in np.flatnonzero(~own):
                ths[c] = shared
        out[precision_key(t)] = ths
    return out


def _open_rules(classes: dict[str, list[str]], conflict: dict[str, ConflictSpec | None]) -> list[AttributeRules]:
    """Rules that accept everything that needs no review (threshold 0): what the thresholds are fitted on."""
    return [AttributeRules(a, cl, {"open": np.zeros((len(SITUATIONS), len(cl)))},
                           cl.index(OTHER) if OTHER in cl else -1,
                           (conflict[a].min_title_confidence, conflict[a].max_image_probability)
                           if conflict[a] else None) for a, cl in classes.items()]


def calibrate_situations(cs: CalibrationSet, classes: dict[str, list[str]], constraints: Constraints | None,
                         targets=DEFAULT_TARGETS, *, min_support: int = MIN_SUPPORT, confidence: float = CONFIDENCE,
                         min_situation_support: int = MIN_SITUATION_SUPPORT) -> dict:
    """{"situations": {attr: {situation: SituationSpec}}, "conflict": {attr: ConflictSpec}}."""
    attrs = list(classes)
    conflict = {a: conflict_check(cs, j) for j, a in enumerate(attrs)}
    d = decide(_open_rules(classes, conflict), RecordDecoder(classes, constraints), cs.outputs["probs"],
               cs.situations, "open", cs.outputs["text"], cs.outputs["image"])
    situations = {}
    for j, a in enumerate(attrs):
        situations[a] = {}
        for k, name in enumerate(SITUATIONS):
            rows = cs.counts[:, j] & (cs.situations[:, j] == k) & (cs.labels[:, j] != IGNORE)
            if rows.sum() < min_situation_support:
                continue  # no support: never accepted
            ok = rows & d.accepted[j]
            lab = cs.labels[:, j]
            situations[a][name] = SituationSpec(
                support=int(rows.sum()), natural=int((rows & (cs.copy == 0)).sum()),
                class_support=np.bincount(lab[rows & (lab >= 0)], minlength=len(classes[a])).tolist(),
                thresholds=_class_thresholds(d.confidence[j][ok], d.value[j][ok], lab[ok], len(classes[a]),
                                             targets, min_support, confidence))
    return {"situations": {a: {k: v.model_dump() for k, v in s.items()} for a, s in situations.items()},
            "conflict": {a: (c.model_dump() if c else None) for a, c in conflict.items()}}


def calibrate_checkpoint(path: str | Path | None, model, data: Encoded, va: np.ndarray, classes: dict[str, list[str]],
                         tok, label_words: dict[str, list[str]], constraints: Constraints | None,
                         targets=DEFAULT_TARGETS, *, min_support: int = MIN_SUPPORT,
                         confidence: float = CONFIDENCE, features=None, variants: dict | None = None) -> dict:
    """Calibrate on the validation rows va and their copies; writes calibration.json into path (if
    given). label_words: each attribute's labels; variants: how titles spell them (the matcher
    matches both). `features`: a locked tower's stored outputs for va (training/data/features.py), or None."""
    variants = variants or {}
    label_words = matcher_words_of(label_words, variants)
    cs = calibration_set(model, data, va, tok, label_words, features=features, variants=variants)
    nat = cs.copy == 0
    doc = calibrate_probs([p[nat] for p in cs.outputs["probs"]], cs.labels[nat], list(classes), targets,
                          min_support=min_support, confidence=confidence)
    doc.update(calibrate_situations(cs, classes, constraints, targets, min_support=min_support,
                                    confidence=confidence))
    doc.update({"label_words": label_words, "label_variants": variants, "constraints": constraints.model_dump() if constraints else None,
                "folded_class": {a: (OTHER if OTHER in cl else None) for a, cl in classes.items()},
                "min_situation_support": MIN_SITUATION_SUPPORT,
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
            folded_class=(calib.get("folded_class") or {}).get(a)))
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
