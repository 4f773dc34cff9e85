"""Classification metrics and per-class threshold calibration (numpy only).

The decision rule is argmax-with-threshold: a product is given class c when c is the argmax and
its probability is >= the threshold for c. One-vs-rest per class, a product's score for c is
its probability of c when c is the argmax, and -inf otherwise (c is never predicted for it).

For a target precision, the calibrated threshold is the one that maximises recall subject to
precision >= target on the validation split (ties in recall go to the higher threshold). When no
threshold reaches the target, the target is *unreachable* for that class: the threshold is None
and the class is never accepted at that precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attrx.service.contract.bundle import precision_key
from attrx.training.evaluation.certify import certified_threshold, first_size

UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class RPPoint:
    threshold: float | None  # None: target unreachable
    recall: float | None
    precision: float | None


def class_scores(probs: np.ndarray, c: int) -> np.ndarray:
    """Score of class c under the argmax rule: p[c] where c is the argmax, else -inf."""
    return np.where(probs.argmax(axis=1) == c, probs[:, c], -np.inf)


def precision_lower_bound(tp: np.ndarray, n: np.ndarray, confidence: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound of a precision tp/n at the given confidence
    (0 returns the point estimate tp/n)."""
    tp, n = np.asarray(tp, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if confidence <= 0:
        return tp / np.maximum(n, 1)
    from scipy.stats import beta

    with np.errstate(invalid="ignore"):
        lo = beta.ppf(1.0 - confidence, tp, n - tp + 1)
    return np.where(tp > 0, np.nan_to_num(lo, nan=0.0), 0.0)


def recall_at_precision(scores: np.ndarray, positive: np.ndarray, target: float,
                        confidence: float = 0.0) -> RPPoint:
    """Best recall with precision >= target, over thresholds at the distinct finite scores. With a
    confidence > 0, the precision that must reach the target is its Clopper-Pearson lower bound,
    so a threshold resting on a handful of accepted items is not trusted."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    finite = np.isfinite(scores)
    if n_pos == 0 or not finite.any():
        return RPPoint(None, None, None)
    s, p = scores[finite], positive[finite]
    order = np.argsort(-s, kind="stable")
    s, p = s[order], p[order]
    tp = np.cumsum(p)
    pp = np.arange(1, len(s) + 1)
    # a threshold at a score admits every item with that score: evaluate at the end of each tie group
    last = np.r_[s[1:] != s[:-1], True]
    thr, tp, pp = s[last], tp[last], pp[last]
    precision = tp / pp
    ok = precision_lower_bound(tp, pp, confidence) >= target - 1e-12
    if not ok.any():
        return RPPoint(None, None, None)
    recall = tp / n_pos
    best = np.flatnonzero(ok)
    # recall grows as the threshold falls; take the highest threshold reaching the best feasible recall
    r_best = recall[best].max()
    k = best[np.flatnonzero(recall[best] == r_best)[0]]
    return RPPoint(float(thr[k]), float(recall[k]), float(precision[k]))


def precision_recall_at(scores: np.ndarray, positive: np.ndarray, threshold: float | None) -> tuple[float | None, float]:
    """(precision, recall) of accepting scores >= threshold; precision None when nothing is accepted."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    if threshold is None:
        return None, 0.0
    acc = np.asarray(scores) >= threshold
    tp = int((acc & positive).sum())
    return (tp / int(acc.sum()) if acc.any() else None), (tp / n_pos if n_pos else 0.0)


def calibrate(probs: np.ndarray, labels: np.ndarray, targets: list[float], *, min_support: int = 0,
              confidence: float = 0.0) -> dict[str, list[float | None]]:
    """Per target precision, a threshold per class. None: the target is unreachable, or the class
    has fewer than min_support validation positives (a threshold on so few promises nothing)."""
    support = np.bincount(labels[labels >= 0], minlength=probs.shape[1])
    out = {}
    for t in targets:
        out[f"{t:.2f}"] = [
            recall_at_precision(class_scores(probs, c), labels == c, t, confidence).threshold
            if support[c] >= max(1, min_support) else None
            for c in range(probs.shape[1])
        ]
    return out


def accepted_precision(probs: np.ndarray, labels: np.ndarray, thresholds: list[float | None],
                       classes: list[str]) -> dict:
    """Realised precision of the predictions a threshold set accepts (argmax >= its class's
    threshold): micro over all accepted items, and per predicted class."""
    m = labels != -100
    probs, labels = probs[m], labels[m]
    pred, conf = probs.argmax(1), probs.max(1)
    thr = np.array([np.inf if x is None else x for x in thresholds])
    acc = conf >= thr[pred]
    ok = acc & (pred == labels)
    per_class = {}
    for c, name in enumerate(classes):
        n = int((acc & (pred == c)).sum())
        if n:
            per_class[name] = {"accepted": n, "precision": round(float(ok[pred == c].sum() / n), 4)}
    n_acc = int(acc.sum())
    return {"accepted": n_acc, "of": int(len(labels)), "coverage": round(n_acc / max(1, len(labels)), 4),
            "precision": round(float(ok.sum() / n_acc), 4) if n_acc else None, "per_class": per_class}


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Labels < 0 mean 'unlabelled' (-100, excluded) or 'class unseen in training' (-1, counted wrong)."""
    m = labels != -100
    if not m.any():
        return None
    return float((probs[m].argmax(1) == labels[m]).mean())


def macro_f1(probs: np.ndarray, labels: np.ndarray) -> float | None:
    m = labels != -100
    if not m.any():
        return None
    y, yhat = labels[m], probs[m].argmax(1)
    f1s = []
    for c in sorted(set(y[y >= 0].tolist()) | set(yhat.tolist())):
        tp = int(((yhat == c) & (y == c)).sum())
        fp = int(((yhat == c) & (y != c)).sum())
        fn = int(((yhat != c) & (y == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1s))


def recall_report(
    probs: np.ndarray,
    labels: np.ndarray,
    thresholds: list[float | None],
    classes: list[str],
    val_positives: np.ndarray,
    min_positives: int,
) -> dict:
    """Recall on a test split at validation-calibrated thresholds, macro-averaged over classes with
    at least `min_positives` positives in both splits. A class whose target was unreachable on
    validation is never accepted: it counts with recall 0 and is listed as unreachable. When every
    counted class is unreachable, the macro recall is reported as "unreachable"."""
    per_class, recalls, unreachable, skipped = {}, [], [], []
    for c, name in enumerate(classes):
        pos = labels == c
        n_test, n_val = int(pos.sum()), int(val_positives[c])
        if min(n_test, n_val) < min_positives:
            skipped.append(name)
            continue
        thr = thresholds[c]
        if thr is None:
            unreachable.append(name)
            per_class[name] = {"threshold": None, "status": UNREACHABLE, "positives": n_test}
            recalls.append(0.0)
            continue
        prec, rec = precision_recall_at(class_scores(probs, c), pos, thr)
        recalls.append(rec)
        per_class[name] = {"threshold": round(thr, 6), "recall": round(rec, 4),
                           "precision": None if prec is None else round(prec, 4), "positives": n_test}
    if not recalls:
        macro = None
    elif len(unreachable) == len(recalls):
        macro = UNREACHABLE
    else:
        macro = round(float(np.mean(recalls)), 4)
    return {
        "macro_recall": macro,
        "classes_counted": len(recalls),
        "classes_unreachable": unreachable,
        "classes_skipped_few_positives": len(skipped),
        "min_positives": min_positives,
        "per_class": per_class,
    }


MIN_POOL = 10  # the shared threshold of the classes without their own needs this many answers


def class_thresholds(conf, value, label, n_classes: int, targets, min_support: int, confidence: float,
                     delta: float | None = None) -> dict:
    """Per target, one threshold per class for the acceptable rows of one situation: certified at
    delta (training/evaluation/certify.py), or (delta None) the lowest whose one-sided bound at
    `confidence` reaches the target. A class gets its own threshold with at least `min_support`
    positives (certified: and as many answers as the test's first step needs); the other classes
    share one, fitted on the rows answered with any of them."""
    def pick(scores, positive, t):
        if delta is not None:
            return certified_threshold(scores, positive, t, delta)
        return recall_at_precision(scores, positive, t, confidence).threshold

    support = np.bincount(label[label >= 0], minlength=n_classes)
    answered = np.bincount(value, minlength=n_classes)
    out = {}
    for t in targets:
        own = support >= max(1, min_support)
        if delta is not None:
            own &= answered >= first_size(t, delta)
        rare = ~own[value]
        ths: list[float | None] = [None] * n_classes
        for c in np.flatnonzero(own):
            ths[c] = pick(np.where(value == c, conf, -np.inf), label == c, t)
        if rare.sum() >= MIN_POOL:
            shared = pick(np.where(rare, conf, -np.inf), rare & (value == label), t)
            for c in np.flatnonzero(~own):
                ths[c] = shared
        out[precision_key(t)] = ths
    return out
