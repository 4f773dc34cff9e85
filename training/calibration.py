"""Per-class thresholds for target precisions, calibrated on the validation split.

A class gets a threshold for a target only when it has at least `min_support` validation
positives, and the threshold is the lowest (most recall) at which the one-sided Clopper-Pearson
lower bound of its validation precision, at `confidence`, still reaches the target. Written to the
checkpoint's calibration.json with each class's support; `attrx export` copies both into the
bundle's manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from attrx.training import metrics
from attrx.training.checkpoint import CALIBRATION
from attrx.training.data import IGNORE, Encoded
from attrx.training.predict import predict_probs

DEFAULT_TARGETS = (0.90, 0.95)
MIN_SUPPORT = 10
CONFIDENCE = 0.5


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


def calibrate_checkpoint(path: str | Path, model, data: Encoded, va: np.ndarray, classes: dict[str, list[str]],
                         targets=DEFAULT_TARGETS, *, min_support: int = MIN_SUPPORT,
                         confidence: float = CONFIDENCE) -> dict:
    probs, _ = predict_probs(model, data, va)
    doc = calibrate_probs(probs, data.labels[va], list(classes), targets, min_support=min_support,
                          confidence=confidence)
    (Path(path) / CALIBRATION).write_text(json.dumps(doc, indent=2))
    return doc
