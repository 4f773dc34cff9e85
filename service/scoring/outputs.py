"""Where `attrx score` writes: JSONL, CSV or Parquet, resumable after any interruption, kill -9 too.

- Rows are appended and flushed batch by batch. JSONL and CSV are the output itself; Parquet rows
  go to `<out>.partial.jsonl` and become the Parquet file when the run ends (a Parquet file is
  unreadable until its footer is written, so a killed run would otherwise keep nothing).
- Every file is exact after a kill -9 at any moment: a half-written last line is cut on resume,
  the meta file is replaced atomically, and Parquet's merge drops partial rows the Parquet file
  already holds (a kill between the merge's rename and the partial file's removal).
- `<out>.meta.json` records the bundle (the sha256 of its manifest, which lists every file's hash)
  and the scoring options. `--resume` refuses an output written with another bundle or options, so
  one file never mixes two models.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

from attrx.service.contract.drift_stats import write_json_atomically

OUTPUT_FORMATS = (".jsonl", ".csv", ".parquet")
# what must match for --resume to append to an output: one file never mixes two models or variants
RESUME_CHECKS = ("bundle_sha256", "min_precision", "precision", "providers", "columns")


def truncate_partial_tail(path: Path) -> None:
    """A run killed mid-write can leave half a line: cut the file back to its last newline."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def keep_rows(path: Path, ids: set[str]) -> None:
    """A JSONL side file cut back to the rows of `ids` (the products in the output): rows written
    for products the output does not hold yet, and a half-written last line, go (they are written
    again when those products are scored)."""
    if not path.exists():
        return
    truncate_partial_tail(path)
    with open(path, encoding="utf-8") as f:
        lines = [x for x in f if x.strip() and json.loads(x)["id"] in ids]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)  # the whole file or the old one


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


def meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


class _JsonlWriter:
    def __init__(self, path: Path, columns: list[str], append: bool):
        self.f = open(path, "a" if append else "w", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        self.f.write("".join(json.dumps(r) + "\n" for r in rows))
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class _CsvWriter:
    def __init__(self, path: Path, columns: list[str], append: bool):
        new = not append or not path.exists() or path.stat().st_size == 0
        self.f = open(path, "a" if append else "w", newline="", encoding="utf-8")
        self.w = csv.DictWriter(self.f, fieldnames=columns)
        if new:
            self.w.writeheader()

    def write(self, rows: list[dict]) -> None:
        self.w.writerows(rows)
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class _ParquetWriter:
    """Rows into `<out>.partial.jsonl` as they come; on close, the Parquet rows already there plus
    the partial rows are written to a temporary file that replaces the output."""

    def __init__(self, path: Path, columns: list[str], append: bool):
        self.path, self.columns = path, columns
        self.partial = partial_path(path)
        self.rows = _JsonlWriter(self.partial, columns, append and self.partial.exists())

    def write(self, rows: list[dict]) -> None:
        self.rows.write(rows)

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.rows.close()
        schema = parquet_schema(self.columns)
        tables = [pq.read_table(self.path).cast(schema)] if self.path.exists() else []
        merged = set(tables[0].column("id").to_pylist()) if tables else set()
        with open(self.partial, encoding="utf-8") as f:
            rows = [r for r in (json.loads(x) for x in f if x.strip()) if r["id"] not in merged]
        tables.append(pa.Table.from_pylist(rows, schema=schema))
        tmp = self.path.with_name(self.path.name + ".tmp")
        pq.write_table(pa.concat_tables(tables), tmp)
        os.replace(tmp, self.path)
        self.partial.unlink()


def parquet_schema(columns: list[str]):
    import pyarrow as pa

    fields = []
    for c in columns:
        if c == "id" or not c.endswith(("_confidence", "_accepted", "_weight", "_threshold", "_conflict",
                                         "_constrained")):
            fields.append(pa.field(c, pa.string()))
        elif c.endswith(("_accepted", "_conflict", "_constrained")):
            fields.append(pa.field(c, pa.bool_()))
        else:
            fields.append(pa.field(c, pa.float64()))
    return pa.schema(fields)


WRITERS = {".jsonl": _JsonlWriter, ".csv": _CsvWriter, ".parquet": _ParquetWriter}


def _ids_in(path: Path) -> set[str]:
    if not path.exists():
        return set()
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return set(pq.read_table(path, columns=["id"]).column("id").to_pylist())
    truncate_partial_tail(path)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return {r["id"] for r in csv.DictReader(f)}
    with open(path, encoding="utf-8") as f:
        return {json.loads(line)["id"] for line in f if line.strip()}


def done_ids(out: Path) -> set[str]:
    """Ids already in an output (for Parquet: in the file and in its partial rows)."""
    ids = _ids_in(out)
    if out.suffix.lower() == ".parquet":
        ids |= _ids_in(partial_path(out))
    return ids


def bundle_sha256(bundle_path: Path) -> str:
    return hashlib.sha256((bundle_path / "manifest.json").read_bytes()).hexdigest()


def _stale(out: Path) -> list[Path]:
    return [p for p in (out, partial_path(out), out.with_name(out.name + ".partial"),
                        out.with_name(out.name + ".tmp")) if p.exists()]


def open_output(out: Path, columns: list[str], meta: dict, *, resume: bool, overwrite: bool):
    """Check the output against the run and open its writer; returns (writer, ids already done)."""
    suffix = out.suffix.lower()
    if suffix not in WRITERS:
        raise ValueError(f"{out}: unknown output format {out.suffix!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    existing = [p for p in (out, partial_path(out)) if p.exists()]
    if existing and not (resume or overwrite):
        raise FileExistsError(f"{existing[0]} exists: --resume continues it, --overwrite replaces it")
    if resume and existing:
        check_meta(out, meta)
        done = done_ids(out)
    else:
        for p in _stale(out):
            p.unlink()
        done = set()
    write_json_atomically(meta_path(out), meta, indent=2)
    return WRITERS[suffix](out, columns, append=bool(done) or (resume and bool(existing))), done


def check_meta(out: Path, meta: dict, *, path: Path | None = None, keys: tuple[str, ...] = RESUME_CHECKS) -> None:
    """Refuse to resume `out` unless its meta file (default `<out>.meta.json`) agrees on `keys`."""
    mp = path or meta_path(out)
    if not mp.exists():
        raise ValueError(f"{out}: cannot resume: no {mp.name} records which bundle and options wrote it "
                         f"(an older attrx?); use --overwrite to score it again")
    old = json.loads(mp.read_text(encoding="utf-8"))
    diffs = [f"{k} {old.get(k)!r} -> {meta[k]!r}" for k in keys if old.get(k) != meta[k]]
    if diffs:
        raise ValueError(f"{out}: cannot resume: it was written with another bundle or options "
                         f"({'; '.join(d[:160] for d in diffs)}); use --overwrite or another --out")
