"""Acceptance thresholds for value families, per attribute x situation x family, on the rows whose
value is not accepted.

A family answer is given only where the value is not accepted, so its thresholds are fitted on
exactly those rows (per target: the rows the calibrated value thresholds turn away for a reason a
family may lift: below the threshold, a class without one, or a title-image conflict within one
family). The family's confidence is the summed probability of the value's family; a family with
at least `min_support` positives among those rows gets its own threshold, the others share one,
by the same one-sided bound as values (metrics.class_thresholds). Accepted values and accepted
families each reach the target, so their union does.

A catalog's hierarchy is kept beside the checkpoint (families.json: {"declared": {attr: {value:
family}}, "use_default": whether attrx's colour families apply elsewhere}) so that every
recalibration (`attrx eval`, `attrx improve`) reads the same one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from attrx.service.contract.bundle import FamilySpec, SituationSpec, precision_key
from attrx.service.contract.constraints import Constraints, RecordDecoder
from attrx.service.contract.decisions import AttributeRules, Families, decide
from attrx.service.contract.families import attribute_families
from attrx.service.contract.situations import SITUATIONS
from attrx.training.data.encode import IGNORE, OTHER
from attrx.training.evaluation import metrics
from attrx.training.evaluation.calibration_set import CalibrationSet

FAMILIES_FILE = "families.json"
LIFTABLE = (2, 3, 4)  # conflict, no threshold for the class, below the threshold (decisions.REVIEW_REASONS)


def read_declared(folder: str | Path) -> tuple[dict, bool]:
    """A checkpoint's declared hierarchy and whether the default colour families apply."""
    f = Path(folder) / FAMILIES_FILE
    doc = json.loads(f.read_text()) if f.is_file() else {}
    return doc.get("declared") or {}, bool(doc.get("use_default", True))


def write_declared(folder: str | Path, spec: str | None, attrs) -> None:
    """--families FILE|none as the checkpoint keeps it (nothing to write for the default)."""
    if not spec:
        return
    from attrx.service.contract.families import read_families

    doc = {"declared": {}, "use_default": False} if spec == "none" else {"declared": read_families(spec, attrs),
                                                                         "use_default": True}
    (Path(folder) / FAMILIES_FILE).write_text(json.dumps(doc, indent=1))


def _value_rules(classes, situations: dict, conflict: dict, fams: dict, key: str) -> list[AttributeRules]:
    """The calibrated value rules for one target, with every family open (threshold 0)."""
    rules = []
    for a, cl in classes.items():
        table = np.array([[np.nan if t is None else t for t in
                           (situations[a][s].thresholds[key] if s in situations[a] else [None] * len(cl))]
                          for s in SITUATIONS], dtype=np.float64)
        fam = None
        if a in fams:
            fam = Families(fams[a][0], np.asarray(fams[a][1]), {key: np.zeros((len(SITUATIONS), len(fams[a][0])))})
        c = conflict.get(a)
        rules.append(AttributeRules(a, cl, {key: table}, cl.index(OTHER) if OTHER in cl else -1,
                                    (c.min_title_confidence, c.max_image_probability) if c else None, fam))
    return rules


def calibrate_families(cs: CalibrationSet, classes: dict[str, list[str]], constraints: Constraints | None,
                       situations: dict, conflict: dict, declared: dict | None, targets, *, min_support: int,
                       confidence: float, min_situation_support: int, use_default: bool = True,
                       delta: float | None = None) -> dict:
    """{attr: FamilySpec as a dict} for the attributes with families (see the module)."""
    fams = attribute_families(classes, declared, {a: (OTHER if OTHER in cl else None) for a, cl in classes.items()},
                              use_default=use_default)
    if not fams:
        return {}
    attrs = list(classes)
    specs = {a: {} for a in fams}
    for t in sorted(targets):
        key = precision_key(t)
        d = decide(_value_rules(classes, situations, conflict, fams, key), RecordDecoder(classes, constraints),
                   cs.outputs["probs"], cs.situations, key, cs.outputs["text"], cs.outputs["image"])
        for a, (names, of_class) in fams.items():
            j = attrs.index(a)
            lab = cs.labels[:, j]
            flab = np.where(lab >= 0, np.asarray(of_class)[np.maximum(lab, 0)], -1)
            cand = d.family_accepted[j] & np.isin(d.reason[j], LIFTABLE)
            for k, name in enumerate(SITUATIONS):
                rows = cs.counts[:, j] & (cs.situations[:, j] == k) & (lab != IGNORE)
                if rows.sum() < min_situation_support:
                    continue
                ok = rows & cand
                ths = metrics.class_thresholds(d.family_confidence[j][ok], d.family[j][ok], flab[ok], len(names), [t],
                                               min_support, confidence, delta)[key]
                spec = specs[a].setdefault(name, {"support": int(rows.sum()), "natural": int((rows & (cs.copy == 0)).sum()),
                                                  "class_support": np.bincount(flab[ok & (flab >= 0)],
                                                                               minlength=len(names)).tolist(),
                                                  "thresholds": {}})
                spec["thresholds"][key] = ths
    return {a: FamilySpec(names=fams[a][0], of_class=list(fams[a][1]),
                          source="catalog" if a in (declared or {}) else "default", situations={k: SituationSpec.model_validate(v) for k, v in specs[a].items()}).model_dump()
            for a in fams}
