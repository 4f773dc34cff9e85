"""A catalog's constraints between attributes, and the decoding that respects them.

A constraint group ties a few attributes (say gender, masterCategory, subCategory, articleType)
and lists the combinations of their values a record may hold. `attrx train` learns them from the
training split (hierarchies such as articleType -> subCategory -> masterCategory, and
combinations with enough support such as gender x articleType), or reads a taxonomy file; the
bundle stores them.

Decoding chooses, per product and group, the allowed combination with the highest joint
probability (the sum of the attributes' log-probabilities) instead of each attribute's own argmax.
A product fits no allowed combination when the best one is less than `fit_ratio` times as probable
as the unconstrained best: its values are then left as the model's own argmax (never forced into a
combination it finds implausible) and flagged for review. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class ConstraintGroup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attributes: list[str] = Field(min_length=2)
    allowed: list[list[str]] = Field(min_length=1)  # value names, one per attribute, in that order
    source: str = "learned"  # "learned" from the training split, or "taxonomy: <file>"

    @model_validator(mode="after")
    def _shape(self):
        bad = [c for c in self.allowed if len(c) != len(self.attributes)]
        if bad:
            raise ValueError(f"allowed combinations must have {len(self.attributes)} values each, e.g. {bad[0]}")
        return self


class Constraints(BaseModel):
    model_config = ConfigDict(extra="forbid")
    groups: list[ConstraintGroup] = []
    fit_ratio: float = Field(0.01, gt=0.0, le=1.0)


@dataclass(frozen=True)
class Decoded:
    chosen: np.ndarray  # [N, A] class index per attribute
    changed: np.ndarray  # [N, A] the constraint changed the value from the attribute's own argmax
    no_fit: np.ndarray  # [N, A] the product fits no allowed combination of the attribute's group


class RecordDecoder:
    """Compiled constraints for a fixed attribute order and class lists."""

    def __init__(self, classes: dict[str, Sequence[str]], constraints: Constraints | None):
        self.attributes = list(classes)
        self.fit_log = float(np.log(constraints.fit_ratio)) if constraints else 0.0
        # per group: its attribute columns, its allowed combinations as indices into the group's
        # classes laid side by side [K, g], and each attribute's (start, end) in that layout
        self.groups: list[tuple[list[int], np.ndarray, list[tuple[int, int]]]] = []
        for g in (constraints.groups if constraints else []):
            cols = [self.attributes.index(a) for a in g.attributes if a in classes]
            if len(cols) != len(g.attributes):
                continue  # a group over attributes this model does not predict
            index = [{c: i for i, c in enumerate(classes[a])} for a in g.attributes]
            rows = [[index[k].get(v, -1) for k, v in enumerate(combo)] for combo in g.allowed]
            table = np.array([r for r in rows if min(r) >= 0], dtype=np.int64)
            if len(table):
                sizes = [len(classes[a]) for a in g.attributes]
                starts = np.cumsum([0, *sizes[:-1]])
                self.groups.append((cols, table + starts, [(int(s0), int(s0) + n) for s0, n in zip(starts, sizes,
                                                                                                 strict=True)]))

    def decode(self, probs: Sequence[np.ndarray]) -> Decoded:
        """probs: per attribute [N, C]. Returns the chosen values and what the constraints did."""
        chosen = np.stack([p.argmax(1) for p in probs], 1)
        changed = np.zeros(chosen.shape, dtype=bool)
        no_fit = np.zeros(chosen.shape, dtype=bool)
        for cols, flat, bounds in self.groups:
            # one gather over the group's log-probabilities laid side by side: [N, K combinations]
            logp = np.log(np.maximum(np.concatenate([probs[j] for j in cols], 1), 1e-12))
            score = logp[:, flat].sum(2)
            best = score.argmax(1)
            free = sum(logp[:, lo:hi].max(1) for lo, hi in bounds)
            fits = score[np.arange(len(best)), best] - free >= self.fit_log - 1e-6
            for k, j in enumerate(cols):
                pick = np.where(fits, flat[best, k] - bounds[k][0], chosen[:, j])
                changed[:, j] = pick != chosen[:, j]
                chosen[:, j] = pick
                no_fit[:, j] = ~fits
        return Decoded(chosen, changed, no_fit)

    def decode_one(self, probs: Sequence[np.ndarray], chosen: list[int]) -> tuple[list[int], list[bool], list[bool]]:
        """`decode` for one product (probs: per attribute a 1-D row; chosen: each attribute's own
        argmax), with as few numpy calls as it takes: the serving path."""
        chosen, changed, no_fit = list(chosen), [False] * len(chosen), [False] * len(chosen)
        for cols, flat, bounds in self.groups:
            logp = np.log(np.maximum(np.concatenate([probs[j] for j in cols]), 1e-12))
            score = logp[flat].sum(1)
            best = int(score.argmax())
            free = float(np.maximum.reduceat(logp, [lo for lo, _ in bounds]).sum())
            if float(score[best]) - free < self.fit_log - 1e-6:
                for j in cols:
                    no_fit[j] = True
                continue
            for k, j in enumerate(cols):
                pick = int(flat[best, k]) - bounds[k][0]
                changed[j], chosen[j] = pick != chosen[j], pick
        return chosen, changed, no_fit
