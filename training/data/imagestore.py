"""Decoded images on disk, read back by row: what lets `attrx train` hold a catalog of any size.

Each product's image goes through `attrx.service.contract.preprocess.load_image_array` (the one contract) once,
into one fixed-size float32 record of a file; training reads the records of each batch with
`os.pread`. Nothing is memory-mapped, so the pages read sit in the kernel's page cache, not in
the process's memory: peak RSS does not grow with the catalog.

With a cache folder (`attrx train --image-cache DIR`) the file is kept, named by a key over the
catalog file's bytes, the preprocessing config and each remote image's identity (its URL and its
ETag or Last-Modified, from the image cache: `attrx.service.catalog.sources`), with its decode
errors beside it; a later run on the same catalog, preprocessing and images reads it instead of
decoding again, and a changed remote image makes a new store (only that image is fetched again:
the others come from the image cache). Without one, the file is a temporary one in the output
folder, removed at the end of the run. Remote images are fetched ahead of the decoding workers.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from attrx.service.catalog.decode_pool import DecodePool, chunked
from attrx.service.catalog.images import ImageReadError, named
from attrx.service.catalog.prefetch import prefetched
from attrx.service.catalog.reader import Product, RowError
from attrx.service.catalog.sources import ImageReader, describe, is_remote
from attrx.service.contract.preprocess import ImageError, PreprocessConfig, load_image_array

FORMAT = 1
READER = ImageReader()  # local files, in the decoding workers (remote images come to them as bytes)


def identities(products: list[Product], reader: ImageReader) -> list[str]:
    """Each remote image's URL and validator (checked against its server once per run; fresh cache
    entries are not asked again); local and inline images add nothing (the catalog's bytes hold them)."""
    out = []
    for p, got, err in prefetched(products, lambda p: p.image, reader):
        if is_remote(p.image):
            out.append(f"{p.image} {got.validator if got is not None else 'error: ' + str(err)}")
    return out


def cache_key(catalog_file: Path, cfg: PreprocessConfig, products: list[Product],
              reader: ImageReader | None = None) -> str:
    """Over the catalog file's bytes, the preprocessing config, the products read from it (which
    rows a run keeps depends on its attributes) and their remote images' identities."""
    h = hashlib.sha256()
    h.update("\n".join(f"{p.line}:{p.id}" for p in products).encode())
    h.update("\n".join(identities(products, reader or ImageReader())).encode())
    with open(catalog_file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(json.dumps({"format": FORMAT, "preprocess": cfg.model_dump(mode="json")}, sort_keys=True).encode())
    return h.hexdigest()[:24]


class ImageStore:
    """Read side: N records of shape `shape` (float32); row -1 reads as zeros (no image)."""

    def __init__(self, path: Path, n: int, shape: tuple[int, ...]):
        self.path, self.n, self.shape = Path(path), n, tuple(shape)
        self.record = int(np.prod(shape)) * 4
        self._fd, self._pid = None, None

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # each DataLoader worker opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), *self.shape), dtype=np.float32)
        fd = self._handle()
        for i, r in enumerate(rows):
            if r >= 0:
                os.preadv(fd, [memoryview(out[i]).cast("B")], int(r) * self.record)
        return out

    def __getstate__(self):  # the descriptor does not travel to worker processes
        return {**self.__dict__, "_fd": None, "_pid": None}


@dataclass
class PixelView:
    """`Encoded.arrays["pixel_values"]` for a disk store: indexing reads the rows it needs."""
    store: ImageStore
    rows: np.ndarray  # per encoded item: its record, or -1 (no image)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.store.shape)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> np.ndarray:
        return self.store.read(np.atleast_1d(self.rows[idx]))


_CFG: PreprocessConfig | None = None


def _init(cfg: PreprocessConfig) -> None:
    global _CFG
    _CFG = cfg


def _decode(item: tuple) -> tuple[int, np.ndarray | None, str | None]:
    i, image, data, failed = item
    if failed is not None:
        return i, None, failed
    try:  # read through the catalog's one image reader: regular files only, size-limited
        return i, load_image_array(data if data is not None else READER.read(image), _CFG), None
    except (ImageError, ImageReadError) as e:
        return i, None, named(str(e), describe(image))


def _failed(item: tuple, why: str) -> tuple[int, None, str]:
    return item[0], None, f"image {describe(item[1])!r}: {why}"


def _fetched(todo: list, reader: ImageReader):
    """(index, image, its bytes if remote, the fetch's error): remote images fetched ahead, here."""
    for (i, image), got, err in prefetched(todo, lambda t: t[1], reader):
        yield i, (None if got is not None else image), (got.data if got is not None else None), \
            (str(err) if err is not None else None)


def _decoded(todo: list, cfg: PreprocessConfig, workers: int, reader: ImageReader):
    """(index, array or None, error or None) of every image; in `workers` processes that a death
    or a hung read does not stop (`attrx.service.catalog.decode_pool`), or here with none."""
    _init(cfg)
    if workers <= 0:
        yield from map(_decode, _fetched(todo, reader))
        return
    pool = DecodePool(workers, _init, (cfg,), _decode, _failed, ctx=mp.get_context("fork"))
    try:
        for chunk in pool.map_chunks(chunked(_fetched(todo, reader), 16), threading.Event()):
            yield from chunk
    finally:
        pool.close()


def _write(path: Path, products: list[Product], cfg: PreprocessConfig, workers: int, progress: bool,
           reader: ImageReader) -> dict[int, str]:
    """Decode every image into `path` (record i = product i); returns {product index: error}."""
    shape = (3, cfg.image_size, cfg.image_size)
    record = int(np.prod(shape)) * 4
    todo = [(i, p.image) for i, p in enumerate(products) if p.image is not None]
    errors: dict[int, str] = {}
    bar = tqdm(total=len(todo), desc="decode images", unit="item", disable=None if progress else True, mininterval=1.0)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, record * len(products))
        for i, arr, err in _decoded(todo, cfg, workers, reader):
            if err is None:
                os.pwrite(fd, np.ascontiguousarray(arr, dtype=np.float32).tobytes(), i * record)
            else:
                errors[i] = err
            bar.update()
    finally:
        os.close(fd)
        bar.close()
    return errors


def open_store(products: list[Product], cfg: PreprocessConfig, *, cache_dir: Path | None, catalog_file: Path,
               scratch: Path, workers: int = 0, progress: bool = True) -> tuple[ImageStore, list[RowError], bool]:
    """(the store, the rows whose image could not be read, whether a warm cache was used)."""
    shape = (3, cfg.image_size, cfg.image_size)
    reader = ImageReader()  # one per run: each remote image is validated once in it
    if cache_dir is not None:
        key = cache_key(catalog_file, cfg, products, reader)
        path, meta_path = Path(cache_dir) / f"images-{key}.f32", Path(cache_dir) / f"images-{key}.json"
        if meta_path.is_file() and path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("n") == len(products) and meta.get("format") == FORMAT:
                errs = {int(k): v for k, v in meta["errors"].items()}
                return ImageStore(path, len(products), shape), _row_errors(products, errs), True
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    else:
        path, meta_path = Path(scratch) / ".images.f32", None
    errs = _write(path, products, cfg, workers, progress, reader)
    if meta_path is not None:  # written last: a cache without it is incomplete and is rebuilt
        meta_path.write_text(json.dumps({"format": FORMAT, "n": len(products), "catalog": str(catalog_file),
                                         "preprocess": cfg.model_dump(mode="json"), "errors": errs}))
    return ImageStore(path, len(products), shape), _row_errors(products, errs), False


def _row_errors(products: list[Product], errs: dict[int, str]) -> list[RowError]:
    return [RowError(products[i].line, products[i].id, e) for i, e in sorted(errs.items())]
