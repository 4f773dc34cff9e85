"""The decode stage of `attrx score --ray`: Ray tasks turning catalog rows into model inputs, each
fetching its own batch's remote images (`attrx.service.catalog.prefetch`), so no shared
filesystem is needed for them."""

from __future__ import annotations

import json

import numpy as np

from attrx.service.catalog.images import ImageReadError, named
from attrx.service.catalog.prefetch import prefetched
from attrx.service.catalog.sources import ImageReader, describe
from attrx.service.contract.bundle import load_bundle
from attrx.service.contract.decisions import situation_index
from attrx.service.contract.preprocess import ImageError
from attrx.service.inference.predictor import InputError, Predictor, batch_inputs
from attrx.service.scoring.remote import IMAGE_ERROR, failure

_predictors: dict[tuple, Predictor] = {}


def _predictor(bundle_dir: str, max_image_pixels: int | None) -> Predictor:
    """One Predictor per worker process, reused by every decode task that lands there."""
    key = (bundle_dir, max_image_pixels)
    if key not in _predictors:
        _predictors[key] = Predictor(load_bundle(bundle_dir, verify_hashes=False), max_image_pixels=max_image_pixels)
    return _predictors[key]


_readers: dict[int, ImageReader] = {}


def _reader(reader: ImageReader) -> ImageReader:
    """One reader (its connections, its cache handle) per worker process and run settings."""
    return _readers.setdefault(hash(repr(reader)), reader)


def image_refs(batch: dict) -> list:
    """Each row's image: bytes (a Parquet catalog's image column), a path or a URL, or None."""
    data = batch.get("image_bytes")
    return [bytes(b) if data is not None and b is not None and len(b) else (str(i) if i else None)
            for i, b in zip(batch["image"], data if data is not None else [None] * len(batch["image"]), strict=True)]


def decode_batch(batch: dict, bundle_dir: str, max_image_pixels: int | None, reader: ImageReader,
                 title_only: bool = False, concurrency: int = 16) -> dict:
    """Rows (id, line, title, image) -> model inputs, plus `error` ('' when the row is fine), its
    `detail` (a remote image's url, status and tries, as JSON) and `image_error` (title-only rows)."""
    pred, reader = _predictor(bundle_dir, max_image_pixels), _reader(reader)
    items, errors, details, notes, sits = [], [], [], [], []
    rows = zip(batch["title"], image_refs(batch), strict=True)
    for (title, ref), got, err in prefetched(rows, lambda r: r[1], reader, concurrency=concurrency):
        note, detail = (str(err) if err is not None and title_only and title else ""), ""
        try:  # the catalog's one image reader: regular files only, size-limited; URLs fetched above
            if err is not None and not note:
                detail = json.dumps(failure(err))
                raise err
            data = None if note or ref is None else (got.data if got is not None else reader.read(ref))
            item, situations = pred.decode_request(title, data)
            errors.append("")
        except (ImageError, ImageReadError, InputError) as e:
            item, situations = None, pred.situations(title, ref)
            errors.append(named(str(e), describe(ref) if ref is not None else None) or type(e).__name__)
        items.append(item)
        details.append(detail)
        notes.append(note)
        sits.append(situation_index(situations))
    if None in items:  # rows that failed get inputs of the right shapes, which Infer skips
        blank = pred.decode_request("-", None).inputs
        items = [blank if x is None else x for x in items]
    inputs = batch_inputs(items) if items else {k: v[:0] for k, v in pred.decode_request("-", None).inputs.items()}
    situations = np.asarray(sits, dtype=np.int8).reshape(len(sits), len(pred.attributes))
    return {"id": batch["id"], "line": batch["line"], "error": np.asarray(errors, dtype=object),
            "detail": np.asarray(details, dtype=object), IMAGE_ERROR: np.asarray(notes, dtype=object),
            "situation": situations, "title": batch["title"], "image": batch["image"], **inputs}


def decode_memory(image_size: int, batch_size: int) -> int:
    """Bytes a decode task holds: a batch of float32 pixels, in and out, plus the interpreter."""
    return 2 * batch_size * 3 * image_size * image_size * 4 + (256 << 20)  # Ray measured ~124 MiB a worker
