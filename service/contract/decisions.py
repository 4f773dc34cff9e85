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
class AttributeRules:
    name: str
    classes: list[str]
    thresholds: dict[str, np.ndarray]  # precision key -> [situations, classes], nan: never accepted
    other: int  # the folded class's index, -1 without one
    conflict: tuple[float, float] | None  # (min title confidence, max image probability); None: no check
    # the same thresholds as nested lists (None: never accepted), built once, for one product at a time
    threshold_lists: dict[str, list[list[float | None]]] = field(init=False, repr=False)

    def __post_init__(self):
        lists = {k: [[None if t != t else float(t) for t in row] for row in v.tolist()]
                 for k, v in self.thresholds.items()}
        object.__setattr__(self, "threshold_lists", lists)


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
    return out


def decide_one(rules: Sequence[AttributeRules], decoder: RecordDecoder | None, probs: Sequence[np.ndarray],
               situations: Sequence[int], key: str, text_probs: Sequence[np.ndarray] | None = None,
               image_probs: Sequence[np.ndarray] | None = None, rows: list[list[float]] | None = None) -> list[tuple]:
    """`decide` for one product, in plain Python where numpy's per-call cost would dominate (the
    serving path). probs: per attribute a 1-D row; rows: the same as lists, if the caller has them.
    Per attribute: (value, confidence, threshold or None, reason index or -1, conflict, constrained).
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
        if r.conflict is not None and text_probs is not None and image_probs is not None and BOTH_PRESENT[s]:
            t = text_probs[j]
            ti = int(t.argmax())
            flag = bool(t[ti] >= r.conflict[0]) and bool(image_probs[j][ti] <= r.conflict[1])
        checks = (no_fit[j], c == r.other, flag, thr is None, thr is None or not conf >= thr)
        reason = next((k for k, hit in enumerate(checks) if hit), -1)
        out.append((c, conf, thr, reason, flag, changed[j]))
    return out


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
            if conflicts and a.conflict and manifest.model.unimodal else None))
    decoder = None
    if constraints and manifest.constraints is not None and manifest.constraints.groups:
        decoder = RecordDecoder({a.name: a.classes for a in manifest.attributes}, manifest.constraints)
    return rules, decoder
