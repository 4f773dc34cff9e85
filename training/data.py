"""Turn a catalog into model input arrays, through service.preprocess (the one contract)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from service.catalog import Catalog, Product, RowError
from service.preprocess import ImageError, PreprocessConfig, build_inputs, load_image_array

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
    for p in tqdm(catalog.products, desc="preprocess", unit="item", disable=None if progress else True, mininterval=1.0):
        arr = None
        if p.image is not None:
            try:
                arr = load_image_array(p.image, cfg)
            except ImageError as e:
                errors.append(RowError(p.line, p.id, str(e)))
                continue
        kept.append(p)
        images.append(arr)
    arrays = build_inputs(tok, [p.title for p in kept], images, cfg) if kept else {}
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
    return Encoded(kept, arrays, labels, split), errors
