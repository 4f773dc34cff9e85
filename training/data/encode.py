"""Turn a catalog into model input arrays, through attrx.service.contract.preprocess (the one contract)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from attrx.service.catalog.images import ImageReadError, named
from attrx.service.catalog.prefetch import prefetched
from attrx.service.catalog.reader import Catalog, Product, RowError
from attrx.service.catalog.sources import ImageReader, describe
from attrx.service.contract.preprocess import ImageError, PreprocessConfig, build_inputs, load_image_array

TITLE_CHUNK = 2048
IGNORE = -100  # no label: masked out of the loss and the metrics
UNSEEN = -1  # a label the model has no class for: counted wrong


def split_of(product_id: str, val_frac: float = 0.1, test_frac: float = 0.1) -> str:
    """Deterministic split by id (stable across runs, machines and catalog order)."""
    u = int(hashlib.sha1(product_id.encode()).hexdigest()[:12], 16) / 16**12
    if u < 1.0 - val_frac - test_frac:
        return "train"
    return "val" if u < 1.0 - test_frac else "test"


OTHER = "other"


def label_maps(products: list[Product], attributes: tuple[str, ...], min_count: int = 0) -> dict[str, list[str]]:
    """Classes per attribute, sorted, from the given (training) products. With min_count, labels seen
    fewer times fold into one class "other" (appended last); any label outside the kept classes,
    unseen ones included, then maps to it (see encode_catalog's other_for)."""
    out = {}
    for a in attributes:
        counts: dict[str, int] = {}
        for p in products:
            v = p.labels.get(a)
            if v is not None:
                counts[v] = counts.get(v, 0) + 1
        classes = sorted(c for c, n in counts.items() if n >= min_count)
        if min_count and len(classes) < len(counts):
            classes = [c for c in classes if c != OTHER] + [OTHER]
        if len(classes) < 2:
            raise ValueError(f"attribute {a!r} has {len(classes)} class(es) in the training split; need >= 2")
        out[a] = classes
    return out


@dataclass
class Encoded:
    products: list[Product]
    arrays: dict[str, np.ndarray]  # the model inputs, N items
    labels: np.ndarray  # [N, A] int64: class index, IGNORE or UNSEEN
    split: np.ndarray  # [N] str

    def __len__(self) -> int:
        return len(self.products)

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[idx] for k, v in self.arrays.items()}

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def encode_catalog(
    catalog: Catalog,
    tok: Tokenizer,
    cfg: PreprocessConfig,
    classes: dict[str, list[str]],
    *,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    progress: bool = True,
    other_for: tuple[str, ...] | list[str] = (),
) -> tuple[Encoded, list[RowError]]:
    """Decode every image once and tokenise every title. Rows whose image cannot be read are
    returned as errors (with line and reason) and left out; the rest is kept."""
    kept, images, errors = [], [], []
    reader = ImageReader()  # the default image cache and fetch policy; remote images fetched ahead
    rows = prefetched(catalog.products, lambda p: p.image, reader)
    for p, got, err in tqdm(rows, total=len(catalog.products), desc="preprocess", unit="item",
                            disable=None if progress else True, mininterval=1.0):
        arr = None
        if p.image is not None:
            try:
                if err is not None:
                    raise err
                arr = load_image_array(got.data if got is not None else reader.read(p.image), cfg)
            except (ImageError, ImageReadError) as e:
                errors.append(RowError(p.line, p.id, named(str(e), describe(p.image))))
                continue
        kept.append(p)
        images.append(arr)
    arrays = build_inputs(tok, [p.title for p in kept], images, cfg) if kept else {}
    labels, split = _labels_and_split(kept, classes, other_for, val_frac, test_frac)
    return Encoded(kept, arrays, labels, split), errors


def _labels_and_split(kept: list[Product], classes: dict[str, list[str]], other_for, val_frac: float,
                      test_frac: float) -> tuple[np.ndarray, np.ndarray]:
    attrs = list(classes)
    labels = np.full((len(kept), len(attrs)), IGNORE, dtype=np.int64)
    index = {a: {c: i for i, c in enumerate(classes[a])} for a in attrs}
    for i, p in enumerate(kept):
        for j, a in enumerate(attrs):
            v = p.labels.get(a)
            if v is not None:
                fallback = index[a][OTHER] if a in other_for else UNSEEN
                labels[i, j] = index[a].get(v, fallback)
    split = np.array([split_of(p.id, val_frac, test_frac) for p in kept], dtype=object)
    return labels, split


def encode_catalog_on_disk(
    catalog: Catalog,
    tok: Tokenizer,
    cfg: PreprocessConfig,
    classes: dict[str, list[str]],
    *,
    catalog_file,
    scratch,
    cache_dir=None,
    workers: int = 0,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    progress: bool = True,
    other_for: tuple[str, ...] | list[str] = (),
) -> tuple[Encoded, list[RowError], bool]:
    """As encode_catalog, with the decoded images in a disk store (training/data/imagestore.py) that
    batches read from, so memory does not grow with the catalog. Titles are tokenised in memory
    (a few hundred bytes per product). Returns (encoded, errors, whether a warm cache was used)."""
    from attrx.service.contract.preprocess import encode_titles, normalise_title
    from attrx.training.data.imagestore import PixelView, open_store

    store, errors, warm = open_store(catalog.products, cfg, cache_dir=cache_dir, catalog_file=catalog_file,
                                     scratch=scratch, workers=workers, progress=progress)
    bad = {(e.line, e.id) for e in errors}
    rows = [i for i, p in enumerate(catalog.products) if (p.line, p.id) not in bad]
    kept = [catalog.products[i] for i in rows]
    titles = [normalise_title(p.title) for p in kept]
    # in chunks: the tokenizer's Encoding objects for a whole catalog at once weigh far more than the ids
    chunks = [encode_titles(tok, titles[s : s + TITLE_CHUNK]) for s in range(0, len(titles), TITLE_CHUNK)]
    empty = np.zeros((0, cfg.max_text_len), np.int64)
    ids = np.concatenate([c[0] for c in chunks]) if chunks else empty
    mask = np.concatenate([c[1] for c in chunks]) if chunks else empty
    has_image = np.asarray([p.image is not None for p in kept], dtype=bool)
    arrays = {"input_ids": ids, "attention_mask": mask,
              "pixel_values": PixelView(store, np.where(has_image, np.asarray(rows, dtype=np.int64), -1)),
              "text_present": np.asarray([t is not None for t in titles], dtype=np.float32),
              "image_present": has_image.astype(np.float32)}
    labels, split = _labels_and_split(kept, classes, other_for, val_frac, test_frac)
    return Encoded(kept, arrays, labels, split), errors, warm
