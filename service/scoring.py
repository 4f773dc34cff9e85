"""`attrx score`: predict every product of a catalog file with a bundle.

Images are decoded and titles tokenised in worker processes while the main process runs the
model on full batches, so decoding overlaps inference. Results are appended and flushed batch by
batch (JSONL, CSV; Parquet row groups, finalised on exit), so an interrupted run keeps what it
finished and `--resume` skips the ids already written. Rows that cannot be scored go to
`<out>.errors.jsonl` with their line, id and reason; scoring carries on.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from service.bundle import load_bundle
from service.catalog import RowError, read_catalog
from service.predict import InputError, Predictor, stack
from service.preprocess import ImageError
from service.runtime import load_backend

OUTPUT_FORMATS = (".jsonl", ".csv", ".parquet")


def output_columns(attributes: list[str]) -> list[str]:
    cols = ["id"]
    for a in attributes:
        cols += [a, f"{a}_confidence", f"{a}_accepted", f"{a}_text_weight", f"{a}_image_weight"]
    return cols


def flatten(pid: str, preds: dict[str, dict]) -> dict:
    row = {"id": pid}
    for a, p in preds.items():
        row[a] = p["value"]
        row[f"{a}_confidence"] = round(p["confidence"], 6)
        row[f"{a}_accepted"] = p["accepted"]
        row[f"{a}_text_weight"] = round(p["modality_weights"]["text"], 6)
        row[f"{a}_image_weight"] = round(p["modality_weights"]["image"], 6)
    return row


# -- writers --------------------------------------------------------------------------------------
def _truncate_partial_tail(path: Path) -> None:
    """A run killed mid-write can leave half a line: cut the file back to its last newline."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


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
    """Row groups per batch into a temporary file, renamed over the output when closed (also on
    Ctrl-C / SIGTERM). On resume, the rows already in the output are copied over first."""

    def __init__(self, path: Path, columns: list[str], append: bool):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.path, self.tmp = pa, path, path.with_name(path.name + ".partial")
        fields = []
        for c in columns:
            if c == "id" or not c.endswith(("_confidence", "_accepted", "_weight")):
                fields.append(pa.field(c, pa.string()))
            elif c.endswith("_accepted"):
                fields.append(pa.field(c, pa.bool_()))
            else:
                fields.append(pa.field(c, pa.float64()))
        self.schema = pa.schema(fields)
        self.w = pq.ParquetWriter(self.tmp, self.schema)
        if append and path.exists():
            self.w.write_table(pq.read_table(path).cast(self.schema))

    def write(self, rows: list[dict]) -> None:
        self.w.write_table(self.pa.Table.from_pylist(rows, schema=self.schema))

    def close(self) -> None:
        self.w.close()
        os.replace(self.tmp, self.path)


WRITERS = {".jsonl": _JsonlWriter, ".csv": _CsvWriter, ".parquet": _ParquetWriter}


def done_ids(path: Path) -> set[str]:
    """Ids already in an output file."""
    if not path.exists():
        return set()
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return set(pq.read_table(path, columns=["id"]).column("id").to_pylist())
    _truncate_partial_tail(path)
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return {r["id"] for r in csv.DictReader(f)}
    with open(path, encoding="utf-8") as f:
        return {json.loads(line)["id"] for line in f if line.strip()}


# -- worker processes -------------------------------------------------------------------------------
_predictor: Predictor | None = None


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the process that forked it goes away, so no worker
    (the pool re-forks replacements for killed ones) can outlive an interrupted run."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(0)


def _init_worker(bundle_dir: str, max_image_pixels: int | None) -> None:
    global _predictor
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _predictor = Predictor(load_bundle(bundle_dir, verify_hashes=False), max_image_pixels=max_image_pixels)


def _prepare(task: tuple[int, str, str | None, str | None]):
    line, pid, title, image = task
    try:
        return line, pid, _predictor.prepare(title, image), None
    except (ImageError, InputError) as e:
        return line, pid, None, str(e)


def _prepare_chunk(tasks: list) -> list:
    return [_prepare(t) for t in tasks]



def score(catalog: str | Path, bundle_dir: str | Path, out: str | Path, *, batch_size: int = 32,
          workers: int | None = None, resume: bool = False, overwrite: bool = False,
          min_precision: float | None = None, providers: str = "cpu", max_image_pixels: int | None = None,
          progress: bool = True) -> dict:
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in WRITERS:
        raise ValueError(f"{out}: unknown output format {out.suffix!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    if out.exists() and not (resume or overwrite):
        raise FileExistsError(f"{out} exists: --resume continues it, --overwrite replaces it")
    bundle = load_bundle(bundle_dir)
    predictor = Predictor(bundle, max_image_pixels=max_image_pixels)
    key = predictor.precision_key(min_precision)
    cat = read_catalog(catalog)
    skip = done_ids(out) if resume else set()
    todo = [p for p in cat.products if p.id not in skip]
    errors_path = out.with_name(out.name + ".errors.jsonl")
    columns = output_columns(predictor.attributes)

    workers = workers or max(1, (os.cpu_count() or 2) - 1)
    ctx = mp.get_context("fork")  # before the ONNX session or any thread exists: cheap and safe
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(str(bundle.path), max_image_pixels))
    # the model gets the cores the decoding workers leave free
    backend = load_backend(bundle, providers=providers, threads=max(1, (os.cpu_count() or 2) - workers))
    writer = WRITERS[suffix](out, columns, append=resume and out.exists())
    errors_f = open(errors_path, "w", encoding="utf-8")
    for e in cat.errors:
        errors_f.write(json.dumps(e.to_json()) + "\n")
    scored, failed, interrupted = 0, len(cat.errors), False
    # Ctrl-C / SIGTERM only set a flag: raising from a signal handler could land inside the pool's
    # own locked sections and deadlock pool.terminate(); the loop below stops at a clean point.
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), unit="item", desc="score", disable=None if progress else True, smoothing=0.1)

    def chunks(size: int = 8) -> Iterator[list]:
        # chunked by hand: Pool.imap's own chunking returns a plain generator without next(timeout)
        for s in range(0, len(todo), size):
            yield [(p.line, p.id, p.title, str(p.image) if p.image else None) for p in todo[s : s + size]]

    def flush(batch: list) -> None:
        nonlocal scored
        outputs = backend.run(stack([x for _, x in batch]))
        writer.write([flatten(pid, predictor.decode(outputs, i, key=key)) for i, (pid, _) in enumerate(batch)])
        scored += len(batch)
        bar.update(len(batch))

    batch: list = []
    try:
        # a bounded window of chunks in flight (apply_async, not imap): memory stays bounded and no
        # background thread keeps pushing tasks into a full pipe, which can hang pool.terminate()
        pending: deque = deque()
        source = chunks()

        def submit() -> None:
            chunk = next(source, None)
            if chunk is not None:
                pending.append(pool.apply_async(_prepare_chunk, (chunk,)))

        for _ in range(4 * workers):
            submit()
        while pending and not stop.is_set():
            try:
                chunk = pending[0].get(timeout=0.2)
            except mp.TimeoutError:
                continue
            pending.popleft()
            submit()
            for line, pid, inputs, err in chunk:
                if err is not None:
                    errors_f.write(json.dumps(RowError(line, pid, err).to_json()) + "\n")
                    errors_f.flush()
                    failed += 1
                    bar.update(1)
                    continue
                batch.append((pid, inputs))
                if len(batch) >= batch_size:
                    flush(batch)
                    batch = []
        if batch:  # already decoded: score it, also when stopping
            flush(batch)
        interrupted = stop.is_set()
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
        bar.close()
        if stop.is_set() or sys.exc_info()[0] is not None:
            # stopping early: results may sit in the pool's pipes, where Pool.terminate() can block
            # forever; kill the workers instead (the CLI then exits without the pool's finalizers)
            for child in mp.active_children():
                child.kill()
        else:
            pool.close()  # every result was consumed: a graceful join cannot block
            pool.join()
        writer.close()
        errors_f.close()
    dt = time.perf_counter() - t0
    summary = {"scored": scored, "failed": failed, "skipped_already_done": len(skip),
               "seconds": round(dt, 2), "items_per_s": round(scored / dt, 1) if dt > 0 else None,
               "output": str(out), "errors": str(errors_path), "interrupted": interrupted}
    print(f"scored {scored}, failed {failed}" + (f", skipped {len(skip)} already in {out}" if skip else "")
          + f", {summary['items_per_s']} items/s; output {out}; errors {errors_path}"
          + ("  [interrupted: rerun with --resume]" if interrupted else ""), flush=True)
    return summary
