"""The review queue: the products whose attributes were not all accepted, for people to answer.

`attrx score CATALOG --review-queue QUEUE.jsonl` writes one JSON object per line, one line per
product with at least one attribute not accepted (format 1; documented in docs/review-queue.md):

    {"format": 1, "id": "...", "title": "..." | null, "image": "path" | null, "priority": 1.23,
     "attributes": {"colour": {"value": "blue", "confidence": 0.61, "situation": "silent+image",
                               "threshold": 0.93 | null, "review": "below_threshold",
                               "modality_weights": {"text": 0.2, "image": 0.8},
                               "candidates": [{"value": "navy", "probability": 0.22}, ...]}}}

Only the attributes that need a person are listed; accepted ones are already filled in. The
`priority` is the expected number of wrong values a person corrects by answering the product: the
sum, over its attributes not accepted, of the probability that the answer is wrong (1 - confidence).
It is a first order: the measured comparison with lowest-confidence and random orders is the
simulated reviewer's job (issue 23), not done yet.
"""

from __future__ import annotations

FORMAT = 1
CANDIDATES = 3  # the model's next values after its answer, from the bundle's classes


def priority(preds: dict[str, dict]) -> float:
    """Expected wrong values corrected by answering this product (its attributes not accepted)."""
    return sum(1.0 - p["confidence"] for p in preds.values() if not p["accepted"])


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
                         "review": p["review"],
                         "modality_weights": {k: round(v, 6) for k, v in p["modality_weights"].items()},
                         "candidates": [{"value": c["value"], "probability": round(c["probability"], 6)}
                                        for c in others]}
    return {"format": FORMAT, "id": pid, "title": title, "image": image,
            "priority": round(priority(preds), 6), "attributes": attributes}
