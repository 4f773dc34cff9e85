"""What a user can rely on: accepted predictions per situation, title group and record (numpy only).

Every precision comes with its coverage (accepted / products) and a Clopper-Pearson interval; an
empty accepted set has no precision (None), never 1.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy.stats import beta

from attrx.service.contract.decisions import REVIEW_REASONS, Decisions
from attrx.service.contract.situations import SITUATIONS, names_label

TITLE_GROUPS = ("names_label", "names_other", "silent", "no_title")


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided interval of a proportion k/n at `level`."""
    a = (1.0 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of k/n."""
    return 1.0 if k == n else float(beta.ppf(confidence, k + 1, n - k))


def accepted_stats(correct: np.ndarray, accepted: np.ndarray) -> dict:
    n, k_acc = int(len(correct)), int(accepted.sum())
    ok = int((correct & accepted).sum())
    out = {"accepted": k_acc, "of": n, "coverage": round(k_acc / n, 4) if n else None,
           "precision": round(ok / k_acc, 4) if k_acc else None, "ci95": None, "upper95": None}
    if k_acc:
        lo, hi = clopper_pearson(ok, k_acc)
        out.update(ci95=[round(lo, 4), round(hi, 4)], upper95=round(upper_bound(ok, k_acc), 4))
    return out


def group_report(rows: np.ndarray, correct: np.ndarray, decisions: dict[str, Decisions], j: int,
                 family_right: np.ndarray | None = None) -> dict:
    """Accuracy, acceptance per target and review reasons of the rows selected by `rows`; with value
    families (family_right: the answered family is the label's), also what is accepted at the value
    or, where the value is not, at the family (`accepted_any`) and how much of it at the family."""
    first = next(iter(decisions.values()))
    out = {"n": int(rows.sum()), "accuracy": round(float(correct[rows].mean()), 4) if rows.any() else None,
           "conflicts": int(first.conflict[j][rows].sum()), "constrained": int(first.constrained[j][rows].sum()),
           "accepted": {k: accepted_stats(correct[rows], d.accepted[j][rows]) for k, d in decisions.items()}}
    if family_right is not None:
        out["accepted_any"] = {}
        for k, d in decisions.items():
            fam = d.family_accepted[j][rows]
            out["accepted_any"][k] = {**accepted_stats(np.where(fam, family_right[rows], correct[rows]),
                                                       d.accepted[j][rows] | fam),
                                      "at_family": int(fam.sum()),
                                      "family_precision": round(float(family_right[rows][fam].mean()), 4)
                                      if fam.any() else None}
    reasons = first.reason[j][rows]
    out["review"] = {r: int((reasons == i).sum()) for i, r in enumerate(REVIEW_REASONS) if (reasons == i).any()}
    return out


def title_groups(titles: Sequence[str | None], labels: Sequence[str | None], pattern, spellings=None) -> np.ndarray:
    """Per product, what its title says about the attribute (pattern: its label words; spellings: a
    LabelSpellings, how titles spell each label): index into TITLE_GROUPS."""
    out = np.empty(len(titles), dtype=np.int64)
    for i, (t, lab) in enumerate(zip(titles, labels, strict=True)):
        if not t:
            out[i] = 3
        elif lab and (spellings.names(t, lab) if spellings is not None else names_label(t, lab)):
            out[i] = 0
        elif pattern is not None and pattern.search(t):
            out[i] = 1
        else:
            out[i] = 2
    return out


def attribute_report(labels: np.ndarray, situations: np.ndarray, groups: np.ndarray,
                     decisions: dict[str, Decisions], j: int, family_of: np.ndarray | None = None) -> dict:
    """Per situation and per title group, for attribute j (rows with a label only). family_of: per
    class its family (-1: none), for an attribute with value families."""
    lab = labels != -100
    first = next(iter(decisions.values()))
    correct = first.value[j] == labels
    right = None
    if family_of is not None:
        fam_label = np.where(labels >= 0, family_of[np.maximum(labels, 0)], -1)
        right = (first.family[j] >= 0) & (first.family[j] == fam_label)

    def report(rows):
        return group_report(rows, correct, decisions, j, right)

    by_sit = {s: report(lab & (situations == k)) for k, s in enumerate(SITUATIONS) if (lab & (situations == k)).any()}
    by_title = {g: report(lab & (groups == k)) for k, g in enumerate(TITLE_GROUPS) if (lab & (groups == k)).any()}
    return {"all": report(lab), "situations": by_sit, "title_groups": by_title}


def seen_pairs(train_values: list[dict[str, str]], attrs: list[str]) -> dict[tuple[str, str], set]:
    """The value pairs of each attribute pair that occur in the training products."""
    out: dict[tuple[str, str], set] = {}
    for a, b in itertools.combinations(attrs, 2):
        out[(a, b)] = {(v[a], v[b]) for v in train_values if v.get(a) is not None and v.get(b) is not None}
    return out


def record_report(values: list[list[str]], labels: np.ndarray, chosen: np.ndarray, accepted: np.ndarray,
                  attrs: list[str], pairs: dict[tuple[str, str], set], other: str = "other") -> dict:
    """Record metrics: answered combinations never seen in training (pairs of tied attributes,
    values other than `other`), per 1,000 products; how often `other` is answered and accepted;
    whole-record accuracy. values: per product the answered value per attribute."""
    n = len(values)
    idx = {a: i for i, a in enumerate(attrs)}
    unseen = 0
    for rec in values:
        for (a, b), ok in pairs.items():
            va, vb = rec[idx[a]], rec[idx[b]]
            if other not in (va, vb) and (va, vb) not in ok:
                unseen += 1
                break
    is_other = np.array([[v == other for v in rec] for rec in values], dtype=bool).reshape(n, len(attrs))
    lab = labels != -100
    whole = np.all((chosen == labels) | ~lab, axis=1)
    return {"products": n, "unseen_combinations_per_1000": round(1000 * unseen / max(1, n), 2),
            "unseen_combinations": unseen, "pairs_checked": [list(k) for k in pairs],
            "other_answered": int(is_other.any(1).sum()), "other_answered_rate": round(float(is_other.any(1).mean()), 4)
            if n else None, "other_accepted": int((is_other & accepted).sum()),
            "whole_record_accuracy": round(float(whole.mean()), 4) if n else None}
