"""Read product catalogs: CSV, JSONL or Parquet with columns id, title, image, <attributes...>.

`image` is a path (relative to the catalog or absolute), a URL, an object-store key, or in
Parquet the image's bytes (`attrx.service.catalog.sources`); the catalog itself may be a URL too.
Other column names map onto these with `columns` (`attrx score --columns image=image_link`). A row
may lack a title or an image (not both) and may lack some labels. Malformed rows are reported with
their line and reason and the rest of the catalog is kept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attrx.service.catalog.csvrecords import NOT_UTF8, records
from attrx.service.catalog.sources import ImageRef, local_catalog, resolve

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


class CatalogError(ValueError):
    """The catalog as a whole cannot be used (missing file, unknown format, missing columns)."""


@dataclass(frozen=True)
class Product:
    id: str
    title: str | None
    image: ImageRef | None  # a local Path, a URL, or the image's bytes
    labels: dict[str, str | None] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class RowError:
    line: int
    id: str | None
    reason: str
    detail: dict | None = None  # a remote image's url, HTTP status and tries

    def to_json(self) -> dict:
        return {"line": self.line, "id": self.id, "reason": self.reason, **(self.detail or {})}


@dataclass
class Catalog:
    path: Path
    products: list[Product]
    errors: list[RowError]
    attributes: tuple[str, ...]
    source: str = ""  # where it was read from (a URL for a remote catalog; else the path)


def catalog_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CatalogError(f"{path}: unknown catalog format {path.suffix!r}; use one of {sorted(FORMATS)}")
    return fmt


def parse_columns(spec: str | None) -> dict[str, str]:
    """`image=image_link,id=offer_id` -> {"image_link": "image", "offer_id": "id"} (the catalog's name -> attrx's)."""
    out: dict[str, str] = {}
    for part in filter(None, (x.strip() for x in (spec or "").split(","))):
        ours, _, theirs = part.partition("=")
        if not ours.strip() or not theirs.strip():
            raise CatalogError(f"column mapping {part!r}: write ATTRX_NAME=CATALOG_NAME, e.g. image=image_link")
        out[theirs.strip()] = ours.strip()
    return out


def _image(value) -> ImageRef | str | None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) or None
    return _clean(value)


def _clean(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    s = str(value).strip()
    return s or None


def _csv_rows(path: Path) -> Iterator[tuple[int, dict | None, str | None, list[str]]]:
    recs = records(path)
    header = next(recs, None)
    while header is not None and header.fields is None:  # an unreadable first line is no header
        header = next(recs, None)
    cols = [c.strip() for c in header.fields] if header is not None else []
    id_at = cols.index("id") if "id" in cols else None
    for rec in recs:
        fields = rec.fields
        if rec.error is None and fields is not None and len(fields) > len(cols):
            rec.error = f"{len(fields)} fields, header has {len(cols)}"
        if rec.error is not None:
            readable = fields is not None and id_at is not None and id_at < len(fields)
            yield rec.line, {"__error_id__": _clean(fields[id_at]) if readable else None}, rec.error, cols
            continue
        yield rec.line, dict(zip(cols, [*fields, *[None] * (len(cols) - len(fields))], strict=True)), None, cols


def _raw_rows(path: Path) -> Iterator[tuple[int, dict | None, str | None, list[str]]]:
    """Yield (line, row-or-None, parse-error, columns)."""
    fmt = catalog_format(path)
    if fmt == "csv":
        yield from _csv_rows(path)
    elif fmt == "jsonl":
        cols: list[str] = []
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
            for n, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                if NOT_UTF8.search(text):
                    yield n, None, "is not valid UTF-8 (re-encode the file as UTF-8)", cols
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    yield n, None, f"invalid JSON ({e.msg} at column {e.colno})", cols
                    continue
                except RecursionError:
                    yield n, None, "invalid JSON (nested too deeply)", cols
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
    location: str | Path,
    attributes: Sequence[str] = (),
    *,
    require_labels: bool = False,
    columns: dict[str, str] | None = None,
    cache_dir: str | None = "",
) -> Catalog:
    """Read a catalog (a path or a URL); rows that cannot be used go to `Catalog.errors` with their
    line and reason. `columns` renames the catalog's columns ({their name: attrx's})."""
    path, base = local_catalog(location, cache_dir)
    if not path.is_file():
        raise CatalogError(f"catalog {location} does not exist")
    rename = columns or {}
    products: list[Product] = []
    errors: list[RowError] = []
    seen: set[str] = set()
    fmt = catalog_format(path)
    checked_columns = fmt == "jsonl"  # JSONL has no header: checked after reading
    cols: list[str] = []
    for line, row, err, cols in _raw_rows(path):
        if rename:
            cols = [rename.get(c, c) for c in cols]
            row = {rename.get(k, k): v for k, v in row.items()} if row is not None else None
        if not checked_columns:
            _check_columns(location, cols, attributes)
            checked_columns = True
        if err is not None or row is None:
            errors.append(RowError(line, (row or {}).get("__error_id__"), err or "unreadable row"))
            continue
        pid = _clean(row.get("id"))
        if pid is None:
            errors.append(RowError(line, None, "no id"))
            continue
        if pid in seen:
            errors.append(RowError(line, pid, f"duplicate id {pid!r}"))
            continue
        title = _clean(row.get("title"))
        image = _image(row.get("image"))
        if title is None and image is None:
            errors.append(RowError(line, pid, "neither a title nor an image"))
            continue
        labels = {a: _clean(row.get(a)) for a in attributes}
        if require_labels and all(v is None for v in labels.values()):
            errors.append(RowError(line, pid, f"no label for any of {', '.join(attributes)}"))
            continue
        seen.add(pid)
        products.append(Product(pid, title, resolve(image, base) if isinstance(image, str) else image, labels, line))
    if fmt == "jsonl" or not checked_columns:  # JSONL, or a header with no rows
        _check_columns(location, cols, attributes)
    return Catalog(path, products, errors, tuple(attributes), str(location))


def _check_columns(path: str | Path, cols: Sequence[str], attributes: Sequence[str]) -> None:
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
