"""`attrx score --ray`: the job of `attrx score` on Ray Data, for catalogs beyond one machine.

    catalog rows ─ read and checked by attrx.service.catalog.reader (the same rules and errors as `attrx score`)
      │  ray.data.from_arrow, in blocks
      ▼  map_batches(decode_batch)      tasks: images and titles through attrx.service.contract.preprocess
      ▼  map_batches(Infer)             an actor pool: one onnxruntime session per actor
      ▼  write_parquet / write_json     files in the OUT folder, block by block

OUT is a folder. Its data files hold exactly `attrx score`'s columns and values; beside them
(names starting with `_`, which Parquet and Arrow dataset readers skip):
- `_attrx_meta.json`: the bundle's sha256 and the scoring options; `--resume` refuses a mismatch;
- `_errors/*.jsonl`: every row that could not be scored, with line, id and reason.
`--resume` skips the ids already in OUT's data files. A file cut short by a killed run is removed
first (Parquet without its footer) or cut back to its last whole line (JSON Lines), so its rows
are scored again: no id is lost and none is doubled.

Images may be local paths (then readable from every node: a shared filesystem), URLs or object-store
keys: each decode task fetches its own batch's remote images, concurrently, through the same fetcher
and cache as local scoring (`attrx.service.catalog.sources`), so no shared filesystem is needed for
them. The bundle folder must be readable from every node.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from attrx.service.catalog.reader import RowError, read_catalog
from attrx.service.catalog.sources import ImageReader
from attrx.service.contract.bundle import Bundle, load_bundle
from attrx.service.contract.drift_stats import PROFILE_KEY, Statistics, write_json_atomically
from attrx.service.contract.preprocess import INPUT_NAMES
from attrx.service.contract.situations import SITUATIONS
from attrx.service.inference.predictor import Predictor
from attrx.service.scoring.catalog_drift import CatalogDrift, add_estimate, save_part, sum_parts
from attrx.service.scoring.local import flatten, output_columns
from attrx.service.scoring.outputs import (
    RESUME_CHECKS,
    bundle_sha256,
    check_meta,
    parquet_schema,
    truncate_partial_tail,
)
from attrx.service.scoring.queue_writer import CANDIDATES, queue_row
from attrx.service.scoring.ray_decode import decode_batch, decode_memory
from attrx.service.scoring.remote import IMAGE_ERROR, cache_dir, columns, image_name, image_reader
from attrx.service.scoring.score_settings import ScoreSettings
from attrx.service.telemetry.estimate import EstimateSums

META = "_attrx_meta.json"
ERRORS = "_errors"
DRIFT_PARTS = "_drift"  # the actors' partial drift counts, added up into the meta file at the end
FORMATS = {"parquet": ".parquet", "jsonl": ".json"}  # Ray's write_json writes JSON Lines as *.json
CHECKED = (*RESUME_CHECKS, "format")


class RayNotInstalled(RuntimeError):
    pass


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayNotInstalled("--ray needs Ray Data: pip install 'attrx[ray]'") from None
    return ray


# -- the output folder ----------------------------------------------------------------------------------
def data_files(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith(("_", "."))
                  and p.suffix in FORMATS.values()) if out.is_dir() else []


def _file_ids(path: Path) -> list[str]:
    """The ids in one data file; a Parquet file cut short (no footer) is removed and gives none."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path, columns=["id"]).column("id").to_pylist()
        except Exception:  # noqa: BLE001 - pyarrow raises several types for a truncated file
            path.unlink()
            return []
    truncate_partial_tail(path)
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["id"] for line in f if line.strip()]


def done_ids_in_folder(out: Path) -> list[str]:
    return [i for p in data_files(out) for i in _file_ids(p)]


def error_rows(out: Path) -> list[dict]:
    """The errors output, one record per (line, id) even if a retried task wrote one twice."""
    seen: dict[tuple, dict] = {}
    for p in sorted((out / ERRORS).glob("*.jsonl")) if (out / ERRORS).is_dir() else []:
        for line in p.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # half a line from a killed run
                    continue
                seen.setdefault((r["line"], r["id"]), r)
    return list(seen.values())


def output_format(out: str | Path, fmt: str | None) -> str:
    """The format of OUT's files: `fmt` if given, else from OUT's name (x.jsonl: JSON Lines; x.parquet or a
    name without a suffix: Parquet). A name that says another format than `fmt`, or one Ray does not write
    (x.csv), is refused rather than written as a folder whose name misleads."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")
    suffix = Path(out).suffix.lower()
    named = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", "": None}.get(suffix, "other")
    if named == "other":
        raise ValueError(f"{out}: --ray writes a folder of Parquet or JSON Lines files; name it x.parquet, "
                         f"x.jsonl or without a suffix (not {suffix!r})")
    if fmt is not None and named is not None and named != fmt:
        raise ValueError(f"{out}: the name says {named} but --ray-format is {fmt}: rename OUT or drop --ray-format")
    return fmt or named or "parquet"


def prepare_output(out: Path, meta: dict, *, resume: bool, overwrite: bool) -> set[str]:
    """Check OUT against this run; returns the ids already scored (resume) or empties it."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; --ray writes a folder of {meta['format']} files")
    existing = data_files(out)
    if existing and not (resume or overwrite):
        raise FileExistsError(f"{out} holds {len(existing)} scored file(s): --resume continues it, "
                              f"--overwrite replaces it")
    done: set[str] = set()
    if resume and existing:
        check_meta(out, meta, path=out / META, keys=CHECKED)
        done = set(done_ids_in_folder(out))
    elif out.exists():
        for p in [*existing, out / META]:
            p.unlink(missing_ok=True)
    shutil.rmtree(out / ERRORS, ignore_errors=True)  # bad rows are tried again and reported anew
    (out / ERRORS).mkdir(parents=True)
    write_json_atomically(out / META, meta, indent=2)  # a kill mid-write must not leave half a meta file
    return done


# -- the two stages -------------------------------------------------------------------------------------
class Infer:
    """The actor: one bundle, one onnxruntime session for its life; writes the rows it cannot score
    to its own errors file and returns the scored rows as `attrx score` writes them."""

    def __init__(self, bundle_dir: str, errors_dir: str, *, key: str, providers: str, precision: str,
                 threads: int, queue_dir: str | None = None, drift_dir: str | None = None,
                 title_only: bool = False):
        from attrx.service.inference.runtime import load_backend

        bundle = load_bundle(bundle_dir, verify_hashes=False)
        self.predictor = Predictor(bundle, backend=load_backend(bundle, providers=providers, threads=threads,
                                                                precision=precision))
        self.stats = Statistics(bundle.manifest)
        self.drift_counts, self.drift_items = np.zeros(self.stats.total, np.int64), 0
        self.estimate = EstimateSums(self.predictor.attributes, SITUATIONS)
        self.key = key
        self.title_only = title_only
        self.schema = parquet_schema(output_columns(self.predictor.attributes, title_only))
        part = f"part-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.errors_path = Path(errors_dir) / part
        # the review queue: each actor appends its lines to a part of its own; the driver joins them
        self.queue_path = Path(queue_dir) / part if queue_dir else None
        # drift: this actor's partial counts, rewritten after each batch; the driver adds them up
        self.drift_path = Path(drift_dir) / part.replace(".jsonl", ".npy") if drift_dir else None
        self.top_k = CANDIDATES + 1 if queue_dir else 1

    def _write_queue(self, batch: dict, ok: np.ndarray, responses: list[dict]) -> None:
        rows = [queue_row(str(batch["id"][i]), batch["title"][i], batch["image"][i], r)
                for i, r in zip(np.flatnonzero(ok), responses, strict=True)]
        with open(self.queue_path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows if r is not None))

    def _write_errors(self, batch: dict, bad: np.ndarray) -> None:
        with open(self.errors_path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(RowError(int(batch["line"][i]), str(batch["id"][i]), str(batch["error"][i]),
                                                json.loads(batch["detail"][i] or "null")).to_json()) + "\n"
                            for i in bad))

    def _count_drift(self, outputs: list[np.ndarray], profiles: np.ndarray) -> None:
        if self.drift_path is not None:
            self.drift_counts += self.stats.count(self.stats.bins(outputs, profiles))
            self.drift_items += len(profiles)
            add_estimate(self.estimate, self.stats, outputs, profiles)
            save_part(self.drift_path, self.drift_counts, self.drift_items, self.estimate.sums.ravel())

    def __call__(self, batch: dict):
        import pyarrow as pa

        ok = np.asarray([e == "" for e in batch["error"]], dtype=bool)
        if not ok.all():
            self._write_errors(batch, np.flatnonzero(~ok))
        rows = []
        if ok.any():
            outputs = self.predictor.predict({k: batch[k][ok] for k in INPUT_NAMES})  # a mask: copies, contiguous
            ids, sits = batch["id"][ok], batch["situation"][ok]
            self._count_drift(outputs, batch[PROFILE_KEY][ok])
            responses = [self.predictor.encode_response(outputs, i, key=self.key, top_k=self.top_k,
                                                        situations=[SITUATIONS[k] for k in sits[i]])
                         for i in range(len(ids))]
            rows = [flatten(str(pid), r) for pid, r in zip(ids, responses, strict=True)]
            if self.title_only:
                for row, note in zip(rows, batch[IMAGE_ERROR][ok], strict=True):
                    row[IMAGE_ERROR] = note or None
            if self.queue_path is not None:
                self._write_queue(batch, ok, responses)
        return pa.Table.from_pylist(rows, schema=self.schema)


# -- the job --------------------------------------------------------------------------------------------
def rows_table(products):
    import pyarrow as pa

    cols = {"id": [p.id for p in products], "line": [p.line for p in products],
            "title": [p.title for p in products], "image": [image_name(p.image) for p in products]}
    if any(isinstance(p.image, bytes) for p in products):  # a Parquet catalog with the images inside
        cols["image_bytes"] = pa.array([p.image if isinstance(p.image, bytes) else None for p in products],
                                       pa.binary())
    return pa.table(cols)


def connect_ray(ray, address: str | None, num_cpus: int | None, progress: bool) -> bool:
    """Join a cluster (address or RAY_ADDRESS) or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {} if address else {"num_cpus": num_cpus, "include_dashboard": False}
    ray.init(address=address, logging_level="WARNING", log_to_driver=progress, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = progress
    if not progress:  # --quiet: Ray Data's warnings, not its progress lines
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    return True


def _check_cpus(ray, concurrency: int, num_cpus: float) -> None:
    """Actors hold their CPUs for the whole job: if they take them all, no decode task ever runs."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if concurrency * num_cpus > cpus - 1:
        raise ValueError(f"{concurrency} inference actor(s) x {num_cpus:g} CPU leave no CPU of the cluster's "
                         f"{cpus:g} for decoding images; lower --ray-concurrency or --ray-num-cpus "
                         f"(e.g. --ray-num-cpus {max(0.25, (cpus - 1) / concurrency):g})")


def score_ray(catalog: str | Path, s: ScoreSettings) -> dict:
    """Score a catalog on Ray Data; see the module docstring. With `s.review_queue`, the products with an
    attribute not accepted also go there (each actor writes a part under OUT, joined at the end).
    Returns the run's summary."""
    fmt = output_format(s.out, s.ray_format)
    ray = import_ray()
    out, t0 = Path(s.out), time.perf_counter()
    bundle = load_bundle(s.bundle)
    predictor = Predictor(bundle)
    key = predictor.precision_key(s.min_precision)
    meta = {"bundle": bundle.manifest.name, "bundle_version": bundle.manifest.version,
            "bundle_sha256": bundle_sha256(bundle.path), "min_precision": key, "precision": s.variant,
            "providers": s.providers, "format": fmt, "catalog": str(catalog), "engine": "ray",
            "columns": output_columns(predictor.attributes, s.on_image_error == "title-only")}
    cat = read_catalog(catalog, columns=columns(s), cache_dir=cache_dir(s))
    drift = CatalogDrift.start(bundle.manifest, out / META, s.resume, s.drift_reference, s.drift_thresholds,
                               s.drift_min_products)
    skip = prepare_output(out, meta, resume=s.resume, overwrite=s.overwrite)
    drift_dir = _empty_folder(out / DRIFT_PARTS)
    with open(out / ERRORS / "catalog.jsonl", "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(e.to_json()) + "\n" for e in cat.errors))
    todo = [p for p in cat.products if p.id not in skip]
    queue_dir = _queue_parts(out, s.review_queue, resume=s.resume)
    t_read = time.perf_counter() - t0
    started = bool(todo) and connect_ray(ray, s.ray or None, s.ray_local_cpus, s.progress)  # nothing to do: no Ray
    try:
        if todo:
            _check_cpus(ray, s.ray_concurrency, s.ray_num_cpus)
            _run(ray, rows_table(todo), out, bundle, s, key=key, queue_dir=queue_dir, drift_dir=drift_dir,
                 reader=image_reader(s, catalog))
    finally:
        if started:
            ray.shutdown()
    if queue_dir is not None:
        join_queue(queue_dir, Path(s.review_queue), keep=set(done_ids_in_folder(out)), previous=s.resume)
    drift.add_counts(*sum_parts(drift_dir, drift.stats.total, drift.estimate.size))
    shutil.rmtree(drift_dir, ignore_errors=True)
    summary = _summary(out, skip, time.perf_counter() - t0, t_read)
    summary["drift_exceeded"] = drift.finish(out / META)["exceeded"]
    return summary


def _empty_folder(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _queue_parts(out: Path, review_queue, *, resume: bool) -> Path | None:
    """The folder the actors write their queue parts to, or None without a queue. Emptied first,
    except on --resume: a killed run's parts hold the rows of products already in OUT."""
    if review_queue is None:
        return None
    path = out / ".review-queue"
    if resume:
        path.mkdir(parents=True, exist_ok=True)
        return path
    return _empty_folder(path)


def join_queue(parts: Path, queue: Path, *, keep: set[str], previous: bool) -> None:
    """The queue so far (`previous`: on --resume) and the actors' parts into one file holding one
    row for each product of `keep` (those in OUT) that has one: rows of products a killed run did
    not finish, half-written lines and a retried block's repeats go. Streamed, replaced atomically;
    the parts go."""
    sources = ([queue] if previous and queue.exists() else []) + sorted(parts.glob("part-*.jsonl"))
    seen: set[str] = set()
    tmp = queue.with_name(queue.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for src in sources:
            with open(src, encoding="utf-8") as lines:
                for line in lines:
                    if not line.endswith("\n"):
                        continue  # cut short by a kill
                    pid = json.loads(line)["id"]
                    if pid in keep and pid not in seen:
                        seen.add(pid)
                        f.write(line)
    os.replace(tmp, queue)
    shutil.rmtree(parts, ignore_errors=True)


def _run(ray, rows, out: Path, bundle: Bundle, s: ScoreSettings, *, key: str, reader: ImageReader,
         queue_dir: Path | None = None, drift_dir: Path | None = None) -> None:
    fmt, batch_size, concurrency, num_cpus = output_format(s.out, s.ray_format), s.batch_size, s.ray_concurrency, \
        s.ray_num_cpus
    title_only = s.on_image_error == "title-only"
    blocks = [rows.slice(i, s.ray_block_rows) for i in range(0, rows.num_rows, s.ray_block_rows)]
    ds = ray.data.from_arrow(blocks)
    # Decoding stays in tasks of its own, spread over every free CPU, apart from the actors' sessions.
    # Ray fuses a task stage into the next actor stage when their resource requests are equal; the
    # decode tasks ask for the memory of the batches they hold, which the actors do not.
    ds = ds.map_batches(decode_batch, batch_size=batch_size, batch_format="numpy",
                        fn_kwargs={"bundle_dir": str(bundle.path), "max_image_pixels": s.max_image_pixels,
                                   "reader": reader, "title_only": title_only,
                                   "concurrency": min(s.fetch_concurrency, batch_size)},
                        num_cpus=1, memory=decode_memory(bundle.manifest.preprocess.image_size, batch_size))
    ds = ds.map_batches(Infer, batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=num_cpus,
                        fn_constructor_args=(str(bundle.path), str(out / ERRORS)),
                        fn_constructor_kwargs={"key": key, "providers": s.providers, "precision": s.variant,
                                               "threads": max(1, int(num_cpus)), "title_only": title_only,
                                               "queue_dir": str(queue_dir) if queue_dir else None,
                                               "drift_dir": str(drift_dir) if drift_dir else None})
    if fmt == "parquet":
        ds.write_parquet(str(out))
    else:
        ds.write_json(str(out))


def _summary(out: Path, skip: set, dt: float, t_read: float) -> dict:
    ids = done_ids_in_folder(out)
    errors = error_rows(out)
    scored = len(ids) - len(skip)
    summary = {"scored": scored, "failed": len(errors), "skipped_already_done": len(skip),
               "seconds": round(dt, 2), "read_seconds": round(t_read, 2),
               "items_per_s": round(scored / dt, 1) if dt > 0 else None,
               "output": str(out), "errors": str(out / ERRORS), "duplicates": len(ids) - len(set(ids))}
    print(f"scored {scored}, failed {len(errors)}" + (f", skipped {len(skip)} already in {out}" if skip else "")
          + f", {summary['items_per_s']} items/s (catalog read {t_read:.1f} s of {dt:.1f} s); "
          f"output {out}; errors {out / ERRORS}", flush=True)
    return summary
