"""A catalog's first rows as a catalog of their own, for the benchmarks' smoke runs (--max-products)."""

from __future__ import annotations

import csv
from pathlib import Path


def first_rows(catalog: str | Path, n: int, out: Path) -> Path:
    """The first n rows of a CSV catalog, with image paths made absolute, written into out; the
    catalog itself when n is 0."""
    if not n:
        return Path(catalog)
    base = Path(catalog).resolve().parent
    small = out / "catalog-small.csv"
    out.mkdir(parents=True, exist_ok=True)
    with open(catalog, newline="", encoding="utf-8") as f, open(small, "w", newline="", encoding="utf-8") as g:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(g, fieldnames=reader.fieldnames or [])
        writer.writeheader()
        for i, row in enumerate(reader):
            if i >= n:
                break
            if row.get("image"):
                row["image"] = str(base / row["image"])
            writer.writerow(row)
    return small
