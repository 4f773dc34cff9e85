"""The review queue: the products whose attributes were not all accepted, for people to answer.

`attrx score CATALOG --review-queue QUEUE.jsonl` writes one JSON object per line, one line per
product with at least one attribute not accepted (format 1; documented in docs/review-queue.md):

    {"format": 1, "id": "...", "title": "..." | null, "image": "path" | null, "priority": 1.23,
     "attributes": {"colour": {"value": "blue", "confidence": 0.61, "situation": "silent+image",
                               "threshold": 0.93 | null, "review": "below_threshold",
                               "modality_weights": {"text": 0.2, "image": 0.8},
                               "candidates": [{"value": "navy", "probability": 0.22}, ...]}},
     "accepted": {"gender": "Men", ...}}

Only the attributes that need a person are listed; accepted ones are already filled in (`accepted`,
so a review page can hold the record to the bundle's constraints). The `priority` is the expected
number of wrong values a person corrects by answering the product: the sum, over its attributes not
accepted, of the probability that the answer is wrong (1 - confidence). benchmarks/review.py
measures it against lowest-confidence and random orders.
"""

from __future__ import annotations

import numpy as np

FORMAT = 1
CANDIDATES = 3  # the model's next values after its answer, from the bundle's classes


def priorities(confidence: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """[N] the queue order's key for N products from their [N, A] confidences and accepted flags:
    the expected number of wrong values a person's answer corrects (sum of 1 - confidence over the
    attributes not accepted). 0 for a product with every attribute accepted."""
    return ((1.0 - np.asarray(confidence, dtype=np.float64)) * ~np.asarray(accepted, dtype=bool)).sum(1)


def lowest_confidence(confidence: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """[N] the simpler order it is measured against: 1 - the lowest confidence among the attributes
    not accepted (higher first, like priorities); 0 when every attribute was accepted."""
    pending = np.where(np.asarray(accepted, dtype=bool), np.inf, np.asarray(confidence, dtype=np.float64))
    low = pending.min(1)
    return np.where(np.isfinite(low), 1.0 - low, 0.0)


CERTIFY_BONUS = 0.5


def priority(preds: dict[str, dict]) -> float:
    """priorities() of one product's predictions (attrx score's per-attribute dicts), in plain Python:
    it runs once per queued product while scoring, where numpy's per-call cost would dominate. An
    attribute whose situation is not certified yet but could be (reviews_to_certify > 0) adds
    CERTIFY_BONUS: its answer also counts toward certifying that situation."""
    return float(sum(1.0 - p["confidence"] + (CERTIFY_BONUS if (p.get("reviews_to_certify") or 0) > 0 else 0.0)
                     for p in preds.values() if not p["accepted"]))


def queue_row(pid: str, title: str | None, image: str | None, preds: dict[str, dict]) -> dict | None:
    """The product's queue line, or None when every attribute was accepted."""
    pending = {a: p for a, p in preds.items() if not p["accepted"]}
    if not pending:
        return None
    attributes = {}
    for a, p in pending.items():
        others = [c for c in p["top_k"] if c["value"] != p["value"]][:CANDIDATES]
        attributes[a] = {"value": p["value"], "confidence": round(p["confidence"], 6),
                         "situation": p["situation"],
                         "threshold": None if p["threshold"] is None else round(p["threshold"], 6),
                         "review": p["review"], "reviews_to_certify": p.get("reviews_to_certify"),
                         "modality_weights": {k: round(v, 6) for k, v in p["modality_weights"].items()},
                         "candidates": [{"value": c["value"], "probability": round(c["probability"], 6)}
                                        for c in others]}
        if p.get("family"):  # accepted at the family: what is left to review is which of its values
            f = p["family"]
            attributes[a]["family"] = {"name": f["name"], "confidence": round(f["confidence"], 6),
                                       "accepted": f["accepted"]}
    accepted = {a: p["value"] for a, p in preds.items() if p["accepted"]}
    return {"format": FORMAT, "id": pid, "title": title, "image": image,
            "priority": round(priority(preds), 6), "attributes": attributes, "accepted": accepted}
