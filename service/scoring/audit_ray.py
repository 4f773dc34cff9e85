"""`attrx audit --ray`: the audit's per-product work on Ray Data, the judging on the driver.

    catalog rows ─ read by attrx.service.catalog.reader, as `attrx audit` reads them
      ▼  map_batches(AuditPredict)   an actor pool: each reads its batch's images, keys them
      │                              (sha256, difference hash, 16x16 thumbnail), drops the bytes and
      │                              runs the bundle
      ▼  the driver                  per product: its key, situations and outputs (no image bytes);
                                     duplicates, findings and the queue lines as `attrx audit` makes them

The findings are the ones `attrx audit` writes on one machine (the same model outputs, the same
keys); only where the per-product work runs differs. The driver holds ~3 KB a product (the
thumbnail), as the local audit does.
"""

from __future__ import annotations

import numpy as np

from attrx.service.catalog.sources import ImageReader
from attrx.service.contract.bundle import load_bundle
from attrx.service.contract.decisions import situation_index
from attrx.service.contract.situations import SITUATIONS
from attrx.service.inference.predictor import ImageError, InputError, Predictor
from attrx.service.scoring.image_keys import image_key
from attrx.service.scoring.ray_data import connect_ray, import_ray, rows_table
from attrx.service.scoring.ray_decode import image_refs

THUMB = 16 * 16 * 3


class AuditPredict:
    """The actor: one bundle and session; a batch of rows in, per kept row its key and outputs out."""

    def __init__(self, bundle_dir: str, reader: ImageReader):
        from attrx.service.inference.runtime import load_backend

        bundle = load_bundle(bundle_dir, verify_hashes=False)
        self.predictor = Predictor(bundle, backend=load_backend(bundle, threads=1))
        self.reader = reader

    def __call__(self, batch: dict) -> dict:
        pos, items, shas, hashes, thumbs, sits = [], [], [], [], [], []
        for i, (title, ref) in enumerate(zip(batch["title"], image_refs(batch), strict=True)):
            try:
                data = ref if isinstance(ref, bytes) else (self.reader.read(ref) if ref is not None else None)
                d = self.predictor.decode_request(title, data)
            except (InputError, ImageError, OSError, ValueError):
                continue
            sha, h, thumb = image_key(data)
            pos.append(int(batch["position"][i]))
            items.append(d.inputs)
            shas.append(sha or "")
            hashes.append(-1 if h is None else h)
            thumbs.append(np.full(THUMB, np.nan, np.float32) if thumb is None else thumb.ravel())
            sits.append(situation_index(d.situations))
        n, attrs = len(pos), len(self.predictor.attributes)
        outputs = self.predictor.run_batch(items) if items else []
        cols = {"position": np.asarray(pos, np.int64), "sha": np.asarray(shas, dtype=object),
                # a hash of 64 bits as text: numpy's uint64 does not survive Arrow's round trip on every version
                "dhash": np.asarray([str(h) for h in hashes], dtype=object),
                "thumb": np.asarray(thumbs, np.float32).reshape(n, THUMB),
                "situation": np.asarray(sits, np.int8).reshape(n, attrs)}
        cols.update({f"out{k}": o for k, o in enumerate(outputs)})
        return cols


def predict_on_ray(bundle_dir: str, products: list, reader: ImageReader, *, address: str, batch_size: int,
                   concurrency: int, local_cpus: int | None, progress: bool = False):
    """What `attrx.service.scoring.audit._predict` returns, computed by AuditPredict actors."""
    ray = import_ray()
    table = rows_table(products)
    table = table.append_column("position", [np.arange(len(products), dtype=np.int64)])
    started = connect_ray(ray, address or None, local_cpus, progress)
    try:
        ds = ray.data.from_arrow([table.slice(i, 256) for i in range(0, table.num_rows, 256)])
        ds = ds.map_batches(AuditPredict, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=1,
                            fn_constructor_args=(bundle_dir, reader))
        parts = [b for b in ds.iter_batches(batch_format="numpy", batch_size=None) if len(b["position"])]
    finally:
        if started:
            ray.shutdown()
    return _assemble(products, parts)


def _assemble(products: list, parts: list[dict]):
    if not parts:
        return [], None
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cols["position"], kind="stable")
    kept = []
    for i in order:
        sha, h, thumb = str(cols["sha"][i]), int(cols["dhash"][i]), cols["thumb"][i]
        key = (sha, None if h < 0 else h, None if np.isnan(thumb).all() else thumb.reshape(16, 16, 3)) \
            if sha else (None, None, None)
        kept.append((products[int(cols["position"][i])], key, [SITUATIONS[k] for k in cols["situation"][i]]))
    n_out = sum(k.startswith("out") for k in cols)
    return kept, [cols[f"out{k}"][order] for k in range(n_out)]
