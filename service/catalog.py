"""Read product catalogs: CSV, JSONL or Parquet with columns id, title, image, <attributes...>.

`image` is a path, relative to the catalog file or absolute. A row may lack a title or an image
(not both) and may lack some labels. Malformed rows are reported with their line and reason and
the rest of the catalog is kept.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


class CatalogError(ValueError):
    """The catalog as a whole cannot be used (missing file, unknown format, missing columns)."""


@dataclass(frozen=True)
class Product:
    id: str
    title: str | None
    image: Path | None
    labels: dict[str, str | None] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class RowError:
    line: int
    id: str | None
    reason: str

    def to_json(self) -> dict:
        return {"line": self.line, "id": self.id, "reason": self.reason}


@dataclass
class Catalog:
    path: Path
    products: list[Product]
    errors: list[RowError]
    attributes: tuple[str, ...]


def catalog_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CatalogError(f"{path}: unknown catalog format {path.suffix!r}; use one of {sorted(FORMATS)}")
    return fmt


def _clean(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    s = str(value).strip()
    return s or None


def _raw_rows(path: Path) -> Iterator[tuple[int, dict | None, str | None, list[str]]]:
    """Yield (line, row-or-None, parse-error, columns)."""
    fmt = catalog_format(path)
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = list(reader.fieldnames or [])
            line = 1
            for row in reader:
                start, line = line + 1, reader.line_num
                if None in row:  # more fields than the header
                    yield start, None, f"{len(cols) + len(row[None])} fields, header has {len(cols)}", cols
                    continue
                yield start, row, None, cols
    elif fmt == "jsonl":
        cols: list[str] = []
        with open(path, encoding="utf-8") as f:
            for n, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    yield n, None, f"invalid JSON ({e.msg} at column {e.colno})", cols
                    continue
                if not isinstance(row, dict):
                    yield n, None, f"expected a JSON object, got {type(row).__name__}", cols
                    continue
                cols = list(dict.fromkeys([*cols, *row]))
                yield n, row, None, cols
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        cols = table.column_names
        for n, row in enumerate(table.to_pylist(), start=1):
            yield n, row, None, cols


def read_catalog(
    path: str | Path,
    attributes: Sequence[str] = (),
    *,
    require_labels: bool = False,
) -> Catalog:
    """Read a catalog; rows that cannot be used go to `Catalog.errors` with their line and reason."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalog {path} does not exist")
    base = path.resolve().parent
    products: list[Product] = []
    errors: list[RowError] = []
    seen: set[str] = set()
    fmt = catalog_format(path)
    checked_columns = fmt == "jsonl"  # JSONL has no header: checked after reading
    cols: list[str] = []
    for line, row, err, cols in _raw_rows(path):
        if not checked_columns:
            _check_columns(path, cols, attributes)
            checked_columns = True
        if row is None:
            errors.append(RowError(line, None, err or "unreadable row"))
            continue
        pid = _clean(row.get("id"))
        if pid is None:
            errors.append(RowError(line, None, "no id"))
            continue
        if pid in seen:
            errors.append(RowError(line, pid, f"duplicate id {pid!r}"))
            continue
        title = _clean(row.get("title"))
        image = _clean(row.get("image"))
        if title is None and image is None:
            errors.append(RowError(line, pid, "neither a title nor an image"))
            continue
        labels = {a: _clean(row.get(a)) for a in attributes}
        if require_labels and all(v is None for v in labels.values()):
            errors.append(RowError(line, pid, f"no label for any of {', '.join(attributes)}"))
            continue
        img_path = None
        if image is not None:
            p = Path(image)
            img_path = p if p.is_absolute() else base / p
        seen.add(pid)
        products.append(Product(pid, title, img_path, labels, line))
    if fmt == "jsonl" or not checked_columns:  # JSONL, or a header with no rows
        _check_columns(path, cols, attributes)
    return Catalog(path, products, errors, tuple(attributes))


def _check_columns(path: Path, cols: Sequence[str], attributes: Sequence[str]) -> None:
    missing = [c for c in ("id", *attributes) if c not in cols]
    if missing:
        raise CatalogError(
            f"{path}: missing column(s) {', '.join(missing)}; the catalog has {', '.join(cols) or 'none'}"
        )
    if "title" not in cols and "image" not in cols:
        raise CatalogError(f"{path}: needs a 'title' or an 'image' column (has {', '.join(cols)})")


def write_errors(errors: Sequence[RowError], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for e in errors:
            f.write(json.dumps(e.to_json()) + "\n")
