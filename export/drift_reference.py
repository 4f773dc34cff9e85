"""The drift reference a bundle carries: the validation split's statistics
(attrx.service.contract.drift_stats), computed on the exported fp32 graph through the service's own
decoding path, so that a server or `attrx score` given the same products counts the same bins."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from attrx.export import precision
from attrx.service.catalog.images import ImageReadError
from attrx.service.catalog.prefetch import prefetched
from attrx.service.catalog.reader import read_catalog
from attrx.service.catalog.sources import ImageReader
from attrx.service.contract.bundle import load_bundle
from attrx.service.contract.decode import decode_product
from attrx.service.contract.drift_stats import PROFILE_KEY, Statistics
from attrx.service.contract.preprocess import ImageError, load_tokenizer, normalise_title
from attrx.service.contract.situations import SituationReader

REFERENCE_LIMIT = 20000  # products: beyond this the counts hardly move


def drift_reference(bundle_dir: Path, catalog: Path, split: dict, *, batch: int = 64, progress: bool = True
                    ) -> dict | None:
    """The reference from the catalog's validation split (None when it has no decodable product)."""
    from attrx.training.data.encode import split_of

    bundle = load_bundle(bundle_dir, verify_hashes=False)
    m = bundle.manifest
    tok = load_tokenizer(bundle.tokenizer_path, m.preprocess.max_text_len)
    reader = SituationReader.of_attributes(m.attributes)
    products = [p for p in read_catalog(catalog).products if split_of(p.id, **split) == "val"][:REFERENCE_LIMIT]
    stats = Statistics(m)
    sess = precision.session(bundle.path / "model.onnx")
    counts, n, items = np.zeros(stats.total, np.int64), 0, []
    images = ImageReader()
    rows = prefetched(products, lambda p: p.image, images)  # remote images fetched ahead
    for p, got, err in tqdm(rows, total=len(products), desc="export: drift reference", unit="item",
                            disable=None if progress else True):
        title = normalise_title(p.title)
        if title is None and p.image is None or err is not None:
            continue
        try:
            image = got.data if got is not None else (None if p.image is None else images.read(p.image))
            items.append(decode_product(tok, m.preprocess, reader, title, image).inputs)
        except (ImageError, ImageReadError):
            continue
        if len(items) == batch:
            counts += _count(stats, sess, m.model.outputs, items)
            n, items = n + len(items), []
    if items:
        counts += _count(stats, sess, m.model.outputs, items)
        n += len(items)
    if n == 0:
        print("export: no decodable product in the validation split: the bundle has no drift reference",
              file=sys.stderr)
        return None
    return stats.reference(counts, n, f"validation split of {catalog}")


def _count(stats: Statistics, sess, outputs: list[str], items: list[dict]) -> np.ndarray:
    feeds = {k: np.concatenate([it[k] for it in items]) for k in items[0]}
    profiles = feeds.pop(PROFILE_KEY)
    outs = sess.run(outputs, feeds)
    return stats.count(stats.bins(outs, profiles))
