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
from attrx.service.catalog.images import ImageLimits, ImageReadError, named, read_image_file
from attrx.service.catalog.reader import RowError, read_catalog
from attrx.service.contract.bundle import load_bundle
from attrx.service.contract.drift_stats import PROFILE_KEY
from attrx.service.contract.preprocess import ImageError
from attrx.service.inference.predictor import InputError, Predictor
from attrx.service.inference.runtime import load_backend
from attrx.service.procutil import die_with_parent
from attrx.service.scoring.catalog_drift import CatalogDrift
from attrx.service.scoring.outputs import bundle_sha256, keep_rows, meta_path, open_output
from attrx.service.scoring.queue_writer import CANDIDATES, queue_row
from attrx.service.scoring.score_settings import ScoreSettings


def output_columns(attributes: list[str]) -> list[str]:
    cols = ["id"]
    for a in attributes:
        cols += [a, f"{a}_confidence", f"{a}_accepted", f"{a}_text_weight", f"{a}_image_weight",
                 f"{a}_situation", f"{a}_threshold", f"{a}_conflict", f"{a}_constrained", f"{a}_review"]
    return cols


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
        self.source = {p.id: (p.title, str(p.image) if p.image else None) for p in products} if queue else {}
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
_limits: ImageLimits = ImageLimits()


def _init_worker(bundle_dir: str, max_image_pixels: int | None, limits: ImageLimits) -> None:
    global _predictor, _limits
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _predictor = Predictor(load_bundle(bundle_dir, verify_hashes=False), max_image_pixels=max_image_pixels)
    _limits = limits


def _prepare(task: tuple[int, str, str | None, str | None]):
    line, pid, title, image = task
    try:
        data = read_image_file(image, _limits) if image is not None else None
        return line, pid, _predictor.decode_request(title, data), None
    except (ImageError, ImageReadError, InputError) as e:
        return line, pid, None, named(str(e), image)


def _row_failed(task, why: str):
    line, pid, _, image = task
    return line, pid, None, f"image {image!r}: {why}"


def _tasks(todo: list) -> list[tuple]:
    return [(p.line, p.id, p.title, str(p.image) if p.image else None) for p in todo]


def _report(counts: dict, skip: set, dt: float, out: Path, errors_path: Path, interrupted: bool) -> dict:
    scored = counts["scored"]
    summary = {"scored": scored, "failed": counts["failed"], "skipped_already_done": len(skip),
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
    (attrx.service.scoring.catalog_drift)."""
    out = Path(s.out)
    bundle = load_bundle(s.bundle)
    predictor = Predictor(bundle, max_image_pixels=s.max_image_pixels)
    key = predictor.precision_key(s.min_precision)
    columns = output_columns(predictor.attributes)
    meta = _meta(bundle, key, s.variant, s.providers, columns, catalog)
    cat = read_catalog(catalog)
    drift = CatalogDrift.start(bundle.manifest, meta_path(out), s.resume, s.drift_reference,
                               s.drift_thresholds, s.drift_min_products)
    writer, skip = open_output(out, columns, meta, resume=s.resume, overwrite=s.overwrite)
    todo = [p for p in cat.products if p.id not in skip]
    errors_path = out.with_name(out.name + ".errors.jsonl")

    workers = s.workers or max(1, (os.cpu_count() or 2) - 1)
    limits = ImageLimits.of(s.max_image_bytes, s.image_root.split(os.pathsep) if s.image_root else (), catalog)
    # forked before the ONNX session or any thread exists: cheap and safe (replacements are spawned)
    pool = DecodePool(workers, _init_worker, (str(bundle.path), s.max_image_pixels, limits), _prepare, _row_failed,
                      row_timeout_s=s.image_timeout_s, ctx=mp.get_context("fork"))
    # the model gets the cores the decoding workers leave free
    predictor.backend = load_backend(bundle, providers=s.providers,
                                     threads=max(1, (os.cpu_count() or 2) - workers),
                                     precision=s.variant)
    errors_f = open(errors_path, "w", encoding="utf-8")
    side = SideFiles(todo, s.conflicts, s.review_queue, append=s.resume, done=skip)
    errors_f.write("".join(json.dumps(e.to_json()) + "\n" for e in cat.errors))
    counts = {"scored": 0, "failed": len(cat.errors)}
    # Ctrl-C / SIGTERM only set a flag: raising from a signal handler could land inside the pool's
    # own locked sections and deadlock pool.terminate(); the loop below stops at a clean point.
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), unit="item", desc="score", disable=None if s.progress else True, smoothing=0.1)

    def flush(batch: list) -> None:
        feeds = predictor.batch([x for _, (x, _) in batch])
        outputs = predictor.predict(feeds)
        drift.add(outputs, feeds[PROFILE_KEY])
        preds = [(pid, predictor.encode_response(outputs, i, key=key, situations=sits, top_k=side.top_k))
                 for i, (pid, (_, sits)) in enumerate(batch)]
        side.write(preds)  # first: a product in the output has its side rows (resume trims the others)
        writer.write([flatten(pid, p) for pid, p in preds])
        counts["scored"] += len(batch)
        bar.update(len(batch))

    batch: list = []
    try:
        for chunk in pool.map_chunks(chunked(_tasks(todo), 8), stop):
            for line, pid, inputs, err in chunk:
                if err is not None:
                    errors_f.write(json.dumps(RowError(line, pid, err).to_json()) + "\n")
                    errors_f.flush()
                    counts["failed"] += 1
                    bar.update(1)
                    continue
                batch.append((pid, inputs))
                if len(batch) >= s.batch_size:
                    flush(batch)
                    batch = []
        if batch:  # already decoded: score it, also when stopping
            flush(batch)
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
        bar.close()
        pool.close(kill=stop.is_set() or sys.exc_info()[0] is not None)
        writer.close()
        errors_f.close()
        side.close()
    summary = _report(counts, skip, time.perf_counter() - t0, out, errors_path, stop.is_set())
    summary["drift_exceeded"] = drift.finish(meta_path(out))["exceeded"]
    summary["worker_deaths"] = pool.deaths
    summary["too_many_errors"] = s.max_errors is not None and counts["failed"] > s.max_errors
    return summary
