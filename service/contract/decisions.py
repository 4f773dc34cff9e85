"""From model outputs to answers: the value, the threshold that applies, and whether it is accepted.

Per product and attribute, in this order:
1. the record's constraints choose the value (constraints.RecordDecoder); its confidence is the
   model's marginal probability of that value;
2. the threshold is the one calibrated for the attribute, the product's situation, the value's
   class and the requested precision (none where that situation lacked support: never accepted);
3. a value is accepted when its confidence reaches the threshold, unless it needs review for a
   stronger reason: the product fits no allowed combination, the value is the folded class
   `other` (not a value a catalog can hold), or the title-only and image-only predictions
   disagree confidently (a conflict: a finding about the listing in its own right).

`attrx eval` runs the very same function over a whole split, so what is measured is what is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from attrx.service.contract.bundle import precision_key
from attrx.service.contract.constraints import RecordDecoder
from attrx.service.contract.situations import SITUATIONS

# why a value is not accepted, strongest first
REVIEW_REASONS = ("no_allowed_combination", "other", "conflict", "no_support", "below_threshold")
BOTH_PRESENT = np.array([s.endswith("+image") and not s.startswith("no_title") for s in SITUATIONS])


@dataclass(frozen=True)
class Families:
    """An attribute's value families as decisions use them (service/contract/families.py)."""
    names: list[str]
    of_class: np.ndarray  # [classes] family index, -1: none
    thresholds: dict[str, np.ndarray]  # precision key -> [situations, families], nan: never accepted
    onehot: np.ndarray = field(init=False, repr=False)  # [classes, families]
    members: list[list[int]] = field(init=False, repr=False)
    threshold_lists: dict[str, list[list[float | None]]] = field(init=False, repr=False)

    def __post_init__(self):
        onehot = np.zeros((len(self.of_class), len(self.names)))
        has = self.of_class >= 0
        onehot[np.flatnonzero(has), self.of_class[has]] = 1.0
        object.__setattr__(self, "onehot", onehot)
        object.__setattr__(self, "members", [np.flatnonzero(self.of_class == k).tolist() for k in range(len(self.names))])
        object.__setattr__(self, "threshold_lists", _lists(self.thresholds))


def _lists(thresholds: dict[str, np.ndarray]) -> dict[str, list[list[float | None]]]:
    return {k: [[None if t != t else float(t) for t in row] for row in v.tolist()] for k, v in thresholds.items()}


@dataclass(frozen=True)
class AttributeRules:
    name: str
    classes: list[str]
    thresholds: dict[str, np.ndarray]  # precision key -> [situations, classes], nan: never accepted
    other: int  # the folded class's index, -1 without one
    conflict: tuple[float, float] | None  # (min title confidence, max image probability); None: no check
    families: Families | None = None
    # the same thresholds as nested lists (None: never accepted), built once, for one product at a time
    threshold_lists: dict[str, list[list[float | None]]] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "threshold_lists", _lists(self.thresholds))


@dataclass
class Decisions:
    """Per attribute (the lists) arrays over the products of a batch."""
    value: list[np.ndarray]
    confidence: list[np.ndarray]
    threshold: list[np.ndarray]  # nan: none applies
    accepted: list[np.ndarray]
    conflict: list[np.ndarray]
    constrained: list[np.ndarray]
    reason: list[np.ndarray]  # index into REVIEW_REASONS, -1 when accepted
    # the value's family (-1: none), its summed probability and threshold, and whether the family is
    # accepted (only where the value is not)
    family: list[np.ndarray] = field(default_factory=list)
    family_confidence: list[np.ndarray] = field(default_factory=list)
    family_threshold: list[np.ndarray] = field(default_factory=list)
    family_accepted: list[np.ndarray] = field(default_factory=list)


def image_support(text_probs: np.ndarray, image_probs: np.ndarray) -> np.ndarray:
    """The image-only probability of the value the title-only prediction names."""
    return image_probs[np.arange(len(text_probs)), text_probs.argmax(1)]


def conflicts(text_probs: np.ndarray, image_probs: np.ndarray, both: np.ndarray, rule: tuple[float, float]
              ) -> np.ndarray:
    """The title names a value (title-only confidence >= rule[0]) that the image all but rules out
    (image-only probability of that value <= rule[1])."""
    sure = text_probs.max(1) >= rule[0]
    return both & sure & (image_support(text_probs, image_probs) <= rule[1])


def decide(rules: Sequence[AttributeRules], decoder: RecordDecoder | None, probs: Sequence[np.ndarray],
           situations: np.ndarray, key: str, text_probs: Sequence[np.ndarray] | None = None,
           image_probs: Sequence[np.ndarray] | None = None) -> Decisions:
    """probs (and the unimodal ones): per attribute [N, C]; situations [N, A] indices into SITUATIONS."""
    n = len(situations)
    rows = np.arange(n)
    if decoder is not None and decoder.groups:
        dec = decoder.decode(probs)
        chosen, changed, no_fit = dec.chosen, dec.changed, dec.no_fit
    else:
        chosen = np.stack([p.argmax(1) for p in probs], 1)
        changed = no_fit = np.zeros(chosen.shape, dtype=bool)
    out = Decisions([], [], [], [], [], [], [])
    for j, r in enumerate(rules):
        c, s = chosen[:, j], situations[:, j]
        conf = probs[j][rows, c]
        thr = r.thresholds[key][s, c]
        flag = np.zeros(n, dtype=bool)
        if r.conflict is not None and text_probs is not None and image_probs is not None:
            flag = conflicts(text_probs[j], image_probs[j], BOTH_PRESENT[s], r.conflict)
        checks = (no_fit[:, j], c == r.other, flag, np.isnan(thr), ~(conf >= thr))
        reason = np.full(n, -1)
        for k in reversed(range(len(checks))):  # the strongest reason wins
            reason = np.where(checks[k], k, reason)
        out.value.append(c)
        out.confidence.append(conf)
        out.threshold.append(thr)
        out.accepted.append(reason < 0)
        out.conflict.append(flag)
        out.constrained.append(changed[:, j])
        out.reason.append(reason)
        fam = _family_decisions(r, key, probs[j], c, s, reason, no_fit[:, j],
                                None if text_probs is None else text_probs[j],
                                None if image_probs is None else image_probs[j])
        for lst, v in zip((out.family, out.family_confidence, out.family_threshold, out.family_accepted), fam,
                          strict=True):
            lst.append(v)
    return out


def family_conflicts(f: Families, text_probs: np.ndarray, image_probs: np.ndarray, both: np.ndarray,
                     rule: tuple[float, float]) -> np.ndarray:
    """A conflict across families: the title-only prediction names a value whose family the image
    all but rules out (the image-only summed probability of that family <= rule[1]). A title value
    without a family conflicts as the value does."""
    named = text_probs.argmax(1)
    tf = f.of_class[named]
    img = (image_probs @ f.onehot)[np.arange(len(named)), np.maximum(tf, 0)]
    img = np.where(tf >= 0, img, image_probs[np.arange(len(named)), named])
    return both & (text_probs.max(1) >= rule[0]) & (img <= rule[1])


def _family_decisions(r: AttributeRules, key: str, probs: np.ndarray, c: np.ndarray, s: np.ndarray,
                      reason: np.ndarray, no_fit: np.ndarray, text_probs, image_probs) -> tuple:
    n = len(c)
    if r.families is None:
        return np.full(n, -1), np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
    f = r.families
    fam = f.of_class[c]
    fconf = np.where(fam >= 0, (probs @ f.onehot)[np.arange(n), np.maximum(fam, 0)], np.nan)
    fthr = np.where(fam >= 0, f.thresholds[key][s, np.maximum(fam, 0)], np.nan)
    cross = np.zeros(n, dtype=bool)
    if r.conflict is not None and text_probs is not None and image_probs is not None:
        cross = family_conflicts(f, text_probs, image_probs, BOTH_PRESENT[s], r.conflict)
    ok = (reason >= 0) & (fam >= 0) & ~no_fit & (c != r.other) & ~cross & (fconf >= fthr)
    return fam, fconf, fthr, ok


def decide_one(rules: Sequence[AttributeRules], decoder: RecordDecoder | None, probs: Sequence[np.ndarray],
               situations: Sequence[int], key: str, text_probs: Sequence[np.ndarray] | None = None,
               image_probs: Sequence[np.ndarray] | None = None, rows: list[list[float]] | None = None) -> list[tuple]:
    """`decide` for one product, in plain Python where numpy's per-call cost would dominate (the
    serving path). probs: per attribute a 1-D row; rows: the same as lists, if the caller has them.
    Per attribute: (value, confidence, threshold or None, reason index or -1, conflict, constrained,
    family or -1, family confidence or None, family threshold or None, family accepted).
    tests/unit/test_decisions.py holds the two equal."""
    rows = rows if rows is not None else [p.tolist() for p in probs]
    chosen = [max(range(len(r)), key=r.__getitem__) for r in rows]
    changed = [False] * len(rows)
    no_fit = [False] * len(rows)
    if decoder is not None and decoder.groups:
        chosen, changed, no_fit = decoder.decode_one(probs, chosen)
    out = []
    for j, r in enumerate(rules):
        c, s = chosen[j], situations[j]
        conf = rows[j][c]
        thr = r.threshold_lists[key][s][c]
        flag = False
        uni = None  # (title-only, image-only) where the conflict check applies
        if r.conflict is not None and text_probs is not None and image_probs is not None and BOTH_PRESENT[s]:
            uni = (text_probs[j], image_probs[j])
            ti = int(uni[0].argmax())
            flag = bool(uni[0][ti] >= r.conflict[0]) and bool(uni[1][ti] <= r.conflict[1])
        checks = (no_fit[j], c == r.other, flag, thr is None, thr is None or not conf >= thr)
        reason = next((k for k, hit in enumerate(checks) if hit), -1)
        fam = _family_one(r, key, rows[j], c, s, reason, no_fit[j], uni)
        out.append((c, conf, thr, reason, flag, changed[j], *fam))
    return out


def _family_one(r: AttributeRules, key: str, row: list[float], c: int, s: int, reason: int, no_fit: bool,
                unimodal) -> tuple:
    f = r.families
    k = -1 if f is None else int(f.of_class[c])
    if f is None or k < 0:
        return -1, None, None, False
    fconf = sum(row[i] for i in f.members[k])
    fthr = f.threshold_lists[key][s][k]
    cross = False
    if unimodal is not None and r.conflict is not None:  # family_conflicts for one product, in plain Python
        t, im = unimodal
        ti = int(t.argmax())
        tf = int(f.of_class[ti])
        img = sum(float(im[i]) for i in f.members[tf]) if tf >= 0 else float(im[ti])
        cross = bool(t[ti] >= r.conflict[0]) and img <= r.conflict[1]
    ok = reason >= 0 and not no_fit and c != r.other and not cross and fthr is not None and fconf >= fthr
    return k, fconf, fthr, ok


def situation_index(names: Sequence[str]) -> list[int]:
    return [SITUATIONS.index(s) for s in names]


def _threshold_table(spec, key: str) -> np.ndarray:
    """[situations, classes]: a bundle without situations keeps its per-class thresholds in every
    situation; a situation missing from a situation-calibrated bundle lacked support (nan)."""
    def row(ths):
        return [np.nan if t is None else t for t in ths]

    if spec.situations is None:
        return np.array([row(spec.thresholds[key])] * len(SITUATIONS), dtype=np.float64)
    blank = [None] * len(spec.classes)
    return np.array([row(spec.situations[s].thresholds[key] if s in spec.situations else blank)
                     for s in SITUATIONS], dtype=np.float64)


def family_rules(spec, keys: Sequence[str]) -> Families:
    """An AttributeSpec's FamilySpec as decisions use it (a situation it lacks: never accepted)."""
    blank = [None] * len(spec.names)
    table = {k: np.array([[np.nan if t is None else t for t in (spec.situations[s].thresholds[k]
                                                                  if s in spec.situations else blank)]
                          for s in SITUATIONS], dtype=np.float64) for k in keys}
    return Families(list(spec.names), np.asarray(spec.of_class, dtype=np.int64), table)


def rules_from_manifest(manifest, *, situations: bool = True, conflicts: bool = True,
                        constraints: bool = True) -> tuple[list[AttributeRules], RecordDecoder | None]:
    """The decision rules a bundle carries. Turning a part off (the benchmarks' comparison) falls back
    to the bundle's per-class thresholds for every situation, no conflict check, no constraints."""
    keys = [precision_key(t) for t in manifest.precision_targets]
    rules = []
    for a in manifest.attributes:
        spec = a if situations else a.model_copy(update={"situations": None})
        rules.append(AttributeRules(
            name=a.name, classes=a.classes, thresholds={k: _threshold_table(spec, k) for k in keys},
            other=a.classes.index(a.folded_class) if situations and a.folded_class else -1,
            conflict=(a.conflict.min_title_confidence, a.conflict.max_image_probability)
            if conflicts and a.conflict and manifest.model.unimodal else None,
            families=family_rules(a.families, keys) if situations and a.families else None))
    decoder = None
    if constraints and manifest.constraints is not None and manifest.constraints.groups:
        decoder = RecordDecoder({a.name: a.classes for a in manifest.attributes}, manifest.constraints)
    return rules, decoder
