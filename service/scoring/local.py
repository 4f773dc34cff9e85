"""`attrx score`: predict every product of a catalog file with a bundle.

Images are decoded and titles tokenised in worker processes while the main process runs the
model on full batches, so decoding overlaps inference. Results are appended and flushed batch by
batch (`attrx.service.scoring.outputs`), so an interrupted run, even one killed with -9, keeps what it finished
and `--resume` skips the ids already written, after checking that the same bundle and options
wrote them. Rows that cannot be scored go to `<out>.errors.jsonl` with their line, id and reason;
scoring carries on, and every catalog row ends up in one of the two.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from attrx.service.catalog.decode_pool import DecodePool, chunked
from attrx.service.catalog.images import ImageReadError, named
from attrx.service.catalog.prefetch import FetchStats, prefetched
from attrx.service.catalog.reader import RowError, read_catalog
from attrx.service.catalog.sources import ImageReader, describe
from attrx.service.contract.bundle import load_bundle
from attrx.service.contract.drift_stats import PROFILE_KEY
from attrx.service.contract.preprocess import ImageError
from attrx.service.inference.predictor import InputError, Predictor
from attrx.service.inference.runtime import load_backend
from attrx.service.procutil import die_with_parent
from attrx.service.scoring.catalog_drift import CatalogDrift
from attrx.service.scoring.outputs import bundle_sha256, keep_rows, meta_path, open_output
from attrx.service.scoring.queue_writer import CANDIDATES, queue_row
from attrx.service.scoring.remote import IMAGE_ERROR, cache_dir, columns, failure, image_name, image_reader
from attrx.service.scoring.score_settings import ScoreSettings


def output_columns(attributes: list[str], title_only: bool = False) -> list[str]:
    """The output's columns; with `--on-image-error title-only`, also `image_error` (why a row was
    scored from its title alone, else empty)."""
    cols = ["id"]
    for a in attributes:
        cols += [a, f"{a}_confidence", f"{a}_accepted", f"{a}_text_weight", f"{a}_image_weight",
                 f"{a}_situation", f"{a}_threshold", f"{a}_conflict", f"{a}_constrained", f"{a}_review",
                 f"{a}_accepted_level", f"{a}_family", f"{a}_family_confidence"]
    return cols + [IMAGE_ERROR] if title_only else cols


def flatten(pid: str, preds: dict[str, dict]) -> dict:
    row = {"id": pid}
    for a, p in preds.items():
        row[a] = p["value"]
        row[f"{a}_confidence"] = round(p["confidence"], 6)
        row[f"{a}_accepted"] = p["accepted"]
        row[f"{a}_text_weight"] = round(p["modality_weights"]["text"], 6)
        row[f"{a}_image_weight"] = round(p["modality_weights"]["image"], 6)
        row[f"{a}_situation"] = p["situation"]
        row[f"{a}_threshold"] = None if p["threshold"] is None else round(p["threshold"], 6)
        row[f"{a}_conflict"] = p["conflict"]
        row[f"{a}_constrained"] = p["constrained"]
        row[f"{a}_review"] = p["review"]
        fam = p.get("family")
        row[f"{a}_accepted_level"] = p.get("accepted_level")
        row[f"{a}_family"] = fam["name"] if fam else None
        row[f"{a}_family_confidence"] = round(fam["confidence"], 6) if fam else None
    return row


def conflict_rows(pid: str, preds: dict[str, dict]) -> list[dict]:
    """One row per attribute whose title and image disagree (for `attrx score --conflicts`)."""
    return [{"id": pid, "attribute": a, "value": p["value"], "confidence": round(p["confidence"], 6),
             "situation": p["situation"], **p.get("conflict_values", {})} for a, p in preds.items() if p["conflict"]]


class SideFiles:
    """The JSONL files a run may write beside its output, batch by batch: title-image conflicts
    (`--conflicts`) and the review queue (`--review-queue`, attrx.service.scoring.queue_writer)."""

    def __init__(self, products: list, conflicts: str | Path | None, queue: str | Path | None, append: bool,
                 done: set[str] | None = None):
        mode = "a" if append else "w"
        for path in (conflicts, queue) if append else ():
            if path:  # resuming: exactly the rows of the products the output holds
                keep_rows(Path(path), done or set())
        self.conflicts = open(conflicts, mode, encoding="utf-8") if conflicts else None
        self.queue = open(queue, mode, encoding="utf-8") if queue else None
        self.source = {p.id: (p.title, image_name(p.image)) for p in products} if queue else {}
        # candidates for review: the model's next values after its answer
        self.top_k = CANDIDATES + 1 if queue else 1

    def write(self, preds: list[tuple[str, dict]]) -> None:
        if self.conflicts is not None:
            self.conflicts.write("".join(json.dumps(r) + "\n" for pid, p in preds for r in conflict_rows(pid, p)))
            self.conflicts.flush()
        if self.queue is not None:
            rows = [queue_row(pid, *self.source[pid], p) for pid, p in preds]
            self.queue.write("".join(json.dumps(r) + "\n" for r in rows if r is not None))
            self.queue.flush()

    def close(self) -> None:
        for f in (self.conflicts, self.queue):
            if f is not None:
                f.close()


# -- worker processes -------------------------------------------------------------------------------
_predictor: Predictor | None = None
_reader: ImageReader = ImageReader()
_title_only = False


def _init_worker(bundle_dir: str, max_image_pixels: int | None, reader: ImageReader, title_only: bool) -> None:
    global _predictor, _reader, _title_only
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _predictor = Predictor(load_bundle(bundle_dir, verify_hashes=False), max_image_pixels=max_image_pixels)
    _reader, _title_only = reader, title_only


def _prepare(task: tuple):
    """A task is (line, id, title, image, fetched bytes or None, the fetch's failure or None); the
    result (line, id, inputs or None, error or None, what the row carries: an error's url/status/tries,
    or the image_error of a product scored from its title)."""
    line, pid, title, image, data, failed = task
    if failed is not None:
        if not (_title_only and title):
            return line, pid, None, failed["reason"], {k: v for k, v in failed.items() if k != "reason"}
        image, data = None, None
    try:
        if data is None and image is not None:
            data = _reader.read(image)
        note = {IMAGE_ERROR: failed["reason"]} if failed is not None else None
        return line, pid, _predictor.decode_request(title, data), None, note
    except (ImageError, ImageReadError, InputError) as e:
        return line, pid, None, named(str(e), describe(image) if image is not None else None), None


def _row_failed(task, why: str):
    line, pid, _, image = task[:4]
    return line, pid, None, f"image {describe(image)!r}: {why}", None


def _tasks(todo: list, reader: ImageReader, stats: FetchStats, concurrency: int):
    """Each product's task, its remote image fetched ahead (`attrx.service.catalog.prefetch`)."""
    for p, got, err in prefetched(todo, lambda p: p.image, reader, concurrency=concurrency, stats=stats):
        yield (p.line, p.id, p.title, None if got is not None else p.image, got.data if got is not None else None,
               failure(err) if err is not None else None)


def _report(counts: dict, skip: set, dt: float, out: Path, errors_path: Path, interrupted: bool) -> dict:
    scored = counts["scored"]
    summary = {"scored": scored, "failed": counts["failed"], "title_only": counts["title_only"],
               "skipped_already_done": len(skip),
               "seconds": round(dt, 2), "items_per_s": round(scored / dt, 1) if dt > 0 else None,
               "output": str(out), "errors": str(errors_path), "interrupted": interrupted}
    print(f"scored {scored}, failed {counts['failed']}" + (f", skipped {len(skip)} already in {out}" if skip else "")
          + f", {summary['items_per_s']} items/s; output {out}; errors {errors_path}"
          + ("  [interrupted: rerun with --resume]" if interrupted else ""), flush=True)
    return summary


def _meta(bundle, key: str, precision: str, providers: str, columns: list[str], catalog) -> dict:
    return {"bundle": bundle.manifest.name, "bundle_version": bundle.manifest.version,
            "bundle_sha256": bundle_sha256(bundle.path), "min_precision": key, "precision": precision,
            "providers": providers, "columns": columns, "catalog": str(catalog)}


def score(catalog: str | Path, s: ScoreSettings) -> dict:
    """Score a catalog into `out` (rows that cannot be scored go to `<out>.errors.jsonl`); with
    `s.conflicts`, every attribute whose title and image disagree is also written there as JSONL; with
    `s.review_queue`, every product with an attribute not accepted (attrx.service.scoring.queue_writer).
    The catalog's drift from the bundle's reference (or `s.drift_reference`) goes into the meta file
    (attrx.service.scoring.catalog_drift). The catalog and its images may be local or remote
    (`attrx.service.catalog.sources`); remote images are fetched ahead of decoding."""
    out = Path(s.out)
    bundle = load_bundle(s.bundle)
    predictor = Predictor(bundle, max_image_pixels=s.max_image_pixels)
    key = predictor.precision_key(s.min_precision)
    title_only = s.on_image_error == "title-only"
    cols = output_columns(predictor.attributes, title_only)
    meta = _meta(bundle, key, s.variant, s.providers, cols, catalog)
    cat = read_catalog(catalog, columns=columns(s), cache_dir=cache_dir(s))
    drift = CatalogDrift.start(bundle.manifest, meta_path(out), s.resume, s.drift_reference,
                               s.drift_thresholds, s.drift_min_products)
    writer, skip = open_output(out, cols, meta, resume=s.resume, overwrite=s.overwrite)
    todo = [p for p in cat.products if p.id not in skip]  # resuming refetches nothing already scored
    errors_path = out.with_name(out.name + ".errors.jsonl")
    workers = s.workers or max(1, (os.cpu_count() or 2) - 1)
    reader = image_reader(s, catalog)
    # forked before the ONNX session or any thread exists: cheap and safe (replacements are spawned)
    pool = DecodePool(workers, _init_worker, (str(bundle.path), s.max_image_pixels, reader, title_only), _prepare,
                      _row_failed, row_timeout_s=s.image_timeout_s, ctx=mp.get_context("fork"))
    # the model gets the cores the decoding workers leave free
    predictor.backend = load_backend(bundle, providers=s.providers,
                                     threads=max(1, (os.cpu_count() or 2) - workers),
                                     precision=s.variant)
    errors_f = open(errors_path, "w", encoding="utf-8")
    side = SideFiles(todo, s.conflicts, s.review_queue, append=s.resume, done=skip)
    errors_f.write("".join(json.dumps(e.to_json()) + "\n" for e in cat.errors))
    run = _Run(predictor, key, writer, side, errors_f, drift, title_only,
               tqdm(total=len(todo), unit="item", desc="score", disable=None if s.progress else True, smoothing=0.1))
    run.counts["failed"] = len(cat.errors)
    stats = FetchStats()
    t0 = time.perf_counter()
    try:
        run.loop(pool, _tasks(todo, reader, stats, s.fetch_concurrency), s.batch_size, stats)
    finally:
        pool.close(kill=run.stop.is_set() or sys.exc_info()[0] is not None)
        writer.close()
        errors_f.close()
        side.close()
    summary = _report(run.counts, skip, time.perf_counter() - t0, out, errors_path, run.stop.is_set())
    summary["images"] = stats.to_json()
    summary["drift_exceeded"] = drift.finish(meta_path(out))["exceeded"]
    summary["worker_deaths"] = pool.deaths
    summary["too_many_errors"] = s.max_errors is not None and run.counts["failed"] > s.max_errors
    return summary


class _Run:
    """The scoring loop: decoded rows in catalog order, scored in batches, written batch by batch."""

    def __init__(self, predictor: Predictor, key: str, writer, side: SideFiles, errors_f, drift: CatalogDrift,
                 title_only: bool, bar):
        self.predictor, self.key, self.writer, self.side = predictor, key, writer, side
        self.errors_f, self.drift, self.title_only, self.bar = errors_f, drift, title_only, bar
        self.counts = {"scored": 0, "failed": 0, "title_only": 0}
        self.stop = threading.Event()

    def flush(self, batch: list) -> None:
        p = self.predictor
        feeds = p.batch([x for _, (x, _), _ in batch])
        outputs = p.predict(feeds)
        self.drift.add(outputs, feeds[PROFILE_KEY])
        preds = [(pid, p.encode_response(outputs, i, key=self.key, situations=sits, top_k=self.side.top_k))
                 for i, (pid, (_, sits), _) in enumerate(batch)]
        self.side.write(preds)  # first: a product in the output has its side rows (resume trims the others)
        rows = [flatten(pid, pr) for pid, pr in preds]
        if self.title_only:
            for row, (_, _, note) in zip(rows, batch, strict=True):
                row[IMAGE_ERROR] = (note or {}).get(IMAGE_ERROR)
        self.writer.write(rows)
        self.counts["scored"] += len(batch)
        self.bar.update(len(batch))

    def fail(self, line: int, pid: str, err: str, detail: dict | None) -> None:
        self.errors_f.write(json.dumps(RowError(line, pid, err, detail).to_json()) + "\n")
        self.errors_f.flush()
        self.counts["failed"] += 1
        self.bar.update(1)

    def loop(self, pool: DecodePool, tasks, batch_size: int, stats: FetchStats) -> None:
        # Ctrl-C / SIGTERM only set a flag: raising from a signal handler could land inside the pool's
        # own locked sections and deadlock pool.terminate(); the loop stops at a clean point.
        handlers = {sig: signal.signal(sig, lambda *_: self.stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        batch: list = []
        try:
            for chunk in pool.map_chunks(chunked(tasks, 8), self.stop):
                for line, pid, inputs, err, note in chunk:
                    if err is not None:
                        self.fail(line, pid, err, note)
                        continue
                    self.counts["title_only"] += bool(note)
                    batch.append((pid, inputs, note))
                    if len(batch) >= batch_size:
                        self.flush(batch)
                        batch = []
                        if stats.any():
                            self.bar.set_postfix(stats.postfix(), refresh=False)
            if batch:  # already decoded: score it, also when stopping
                self.flush(batch)
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            self.bar.close()
