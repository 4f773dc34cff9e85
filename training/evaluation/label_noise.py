"""The catalog's own label noise: per attribute, how often products with the very same image bytes
carry different labels. A duplicate image cannot be two colours, so this is a floor on how wrong
the labels precision is measured against are (docs/trust.md#label-findings)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from itertools import combinations
from pathlib import Path


def _digest(image) -> str | None:
    if isinstance(image, bytes):
        return hashlib.sha256(image).hexdigest()
    if isinstance(image, Path) and image.is_file():
        return hashlib.sha256(image.read_bytes()).hexdigest()
    return None  # missing, or a URL: not fetched for this


def duplicate_disagreement(products, attributes) -> dict:
    """{"groups", "pairs", "attributes": {attr: {"pairs", "disagree", "disagree_rate"}}} over the
    pairs of products whose local images (or Parquet bytes) are byte-identical."""
    groups = defaultdict(list)
    for p in products:
        d = _digest(p.image)
        if d is not None:
            groups[d].append(p)
    pairs = [(a, b) for g in groups.values() if len(g) > 1 for a, b in combinations(g, 2)]
    out = {"groups": sum(len(g) > 1 for g in groups.values()), "pairs": len(pairs), "attributes": {}}
    for x in attributes:
        both = [(a, b) for a, b in pairs if a.labels.get(x) and b.labels.get(x)]
        diff = sum(a.labels[x] != b.labels[x] for a, b in both)
        out["attributes"][x] = {"pairs": len(both), "disagree": diff,
                                "disagree_rate": round(diff / len(both), 4) if both else None}
    return out
