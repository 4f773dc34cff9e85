"""`attrx audit`: products whose stored label is likely wrong, each with its evidence.

Per product and attribute with a stored label the bundle knows, the audit reads:
- the model's probability of the stored label (`p_stored`): low means the title and the image
  together point elsewhere. It is out of sample only for products the bundle did not train on:
  audit those (a catalog's new rows, or its validation and test splits); a bundle is confident in
  the labels it learned, so training rows yield few findings (docs/trust.md#label-findings);
- the title-only and image-only predictions (the bundle's unimodal outputs), and the values the
  title names (by the bundle's label variants);
- other products with the very same image bytes (sha256) or the same photo processed otherwise
  (re-encoded, resized: a 64-bit difference hash at most NEAR_BITS apart and 16x16 colour thumbnails
  at most NEAR_MAD apart on average; a difference hash alone matches different products shot alike
  on white) and another stored label.

A product becomes a finding when p_stored < max_p (default 0.1), or a duplicate disagrees and
p_stored < 0.5. Its strength is the probability of the model's answer (the most probable other
value), plus 0.5 when a duplicate image carries another label: a finding is strong when the model is
sure of another value, not merely unsure of the stored one (1 - p_stored is high wherever the
attribute is hard to see, as a season is, whether the label is right or not). Findings are written strongest first (JSONL); with a review queue, each goes to it
with the reason `label_suspect`: a reviewer who keeps the stored value says "label right", one
who picks another says "label wrong", and either is stored as any decision is.

With `ray` set, the per-product work (reading, keying and predicting) runs on Ray Data
(attrx.service.scoring.audit_ray) and the judging here, on the driver: the same findings.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attrx.service.catalog.images import ImageLimits
from attrx.service.catalog.reader import read_catalog
from attrx.service.catalog.sources import ImageReader
from attrx.service.contract.bundle import load_bundle, output_names
from attrx.service.contract.label_variants import LabelSpellings
from attrx.service.inference.predictor import ImageError, InputError, Predictor
from attrx.service.scoring.image_keys import image_key
from attrx.service.scoring.queue_writer import FORMAT

NEAR_BITS = 4
NEAR_MAD = 0.004  # mean absolute difference of 16x16 RGB thumbnails (0-1): a JPEG re-encode is ~0.0025
REASON = "label_suspect"


@dataclass(frozen=True)
class AuditSettings:
    bundle: str
    out: str
    attributes: tuple[str, ...] = ()  # () = every bundle attribute the catalog has a column for
    max_p: float = 0.1
    review_queue: str | None = None
    batch_size: int = 32
    ray: str | None = None  # None: on this machine; "" a local Ray; else a cluster's address
    ray_concurrency: int = 1  # inference actors
    ray_local_cpus: int | None = None


def _predict(predictor: Predictor, products, reader: ImageReader, batch_size: int):
    """Per readable product: (product, its image key, situations); the outputs, one row per kept
    product. Each image's bytes are read, keyed and dropped batch by batch: the audit holds keys
    (a thumbnail of 3 KB a product), never the catalog's images."""
    kept, outputs, items = [], [], []

    def run():
        if items:
            outputs.append(predictor.run_batch(items))
            items.clear()

    for p in products:
        try:
            data = reader.read(p.image) if p.image is not None else None
            d = predictor.decode_request(p.title, data)
        except (InputError, ImageError, OSError, ValueError):
            continue
        kept.append((p, image_key(data), d.situations))
        items.append(d.inputs)
        if len(items) == batch_size:
            run()
    run()
    return kept, join_outputs(outputs)


def join_outputs(parts: list[list[np.ndarray]]) -> list[np.ndarray] | None:
    return [np.concatenate([part[k] for part in parts]) for k in range(len(parts[0]))] if parts else None


def image_keys(kept) -> list[tuple]:
    return [key for _, key, _ in kept]


def _same_photo(a: tuple, b: tuple) -> bool:
    return a[2] is None or b[2] is None or float(np.abs(a[2] - b[2]).mean()) <= NEAR_MAD


def _near_pairs(keys) -> set[tuple[int, int]]:
    """Pairs of products whose difference hashes are at most NEAR_BITS apart and whose thumbnails
    agree (and not identical bytes): candidates share one of NEAR_BITS + 1 slices of the hash
    (pigeonhole), then are checked."""
    slices = NEAR_BITS + 1
    width = 64 // slices
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (_, h, _) in enumerate(keys):
        if h is not None:
            for b in range(slices):
                buckets[(b, (h >> (b * width)) & ((1 << width) - 1))].append(i)
    out = set()
    for group in buckets.values():
        for a, i in enumerate(group):
            for k in group[a + 1:]:
                if keys[i][0] != keys[k][0] and bin(keys[i][1] ^ keys[k][1]).count("1") <= NEAR_BITS \
                        and _same_photo(keys[i], keys[k]):
                    out.add((min(i, k), max(i, k)))
    return out


def _duplicates(kept, keys, near: set[tuple[int, int]], attr: str) -> dict[int, list[dict]]:
    """Per product index, the other products with the same or a near-identical image and another label."""
    def label(i):
        return kept[i][0].labels.get(attr)

    exact = defaultdict(list)
    for i, (sha, _, _) in enumerate(keys):
        if sha is not None:
            exact[sha].append(i)
    out: dict[int, list[dict]] = defaultdict(list)
    for group in exact.values():
        for i in group:
            out[i] += [{"id": kept[k][0].id, "label": label(k), "kind": "exact"} for k in group
                       if k != i and label(k) != label(i)]
    for i, k in sorted(near):
        if label(i) != label(k):
            out[i].append({"id": kept[k][0].id, "label": label(k), "kind": "near"})
            out[k].append({"id": kept[i][0].id, "label": label(i), "kind": "near"})
    return out


def _top(probs: np.ndarray, classes: list[str], k: int = 3) -> list[dict]:
    return [{"value": classes[c], "probability": round(float(probs[c]), 4)} for c in np.argsort(-probs)[:k]]


def _findings(predictor: Predictor, kept, outputs, dups: dict[int, list[dict]], attr: str, max_p: float
              ) -> list[dict]:
    spec = next(a for a in predictor.bundle.manifest.attributes if a.name == attr)
    where = {n: i for i, n in enumerate(predictor.bundle.manifest.model.outputs)}
    names = output_names(attr, predictor.bundle.manifest.model.unimodal)
    probs = outputs[where[names[0]]]
    uni = [outputs[where[n]] for n in names[2:4]] if len(names) == 4 else None
    spell = LabelSpellings(spec.classes, spec.label_variants)
    j = predictor.attributes.index(attr)
    out = []
    for i, (p, _, sits) in enumerate(kept):
        stored = p.labels.get(attr)
        if stored not in spec.classes or stored == spec.folded_class:
            continue
        ps = float(probs[i, spec.classes.index(stored)])
        disagree = bool(dups.get(i))
        if not (ps < max_p or (disagree and ps < 0.5)):
            continue
        ev = {"title_names": spell.named(p.title), "duplicates": dups.get(i, [])}
        if uni is not None:
            ev.update(title_only=_top(uni[0][i], spec.classes), image_only=_top(uni[1][i], spec.classes))
        alt = probs[i].copy()
        alt[spec.classes.index(stored)] = -1.0
        k = int(alt.argmax())
        out.append({"id": p.id, "attribute": attr, "stored": stored, "suggested": spec.classes[k],
                    "p_stored": round(ps, 4), "strength": round(float(alt[k]) + 0.5 * disagree, 4), "situation": sits[j],
                    "title": p.title, "image": str(p.image) if p.image is not None else None, "evidence": ev,
                    "probs": probs[i]})
    return out


def _queue_lines(findings: list[dict], classes: dict[str, list[str]]) -> list[dict]:
    """One queue line per product (a product's line holds all its findings), strongest first."""
    lines: dict[str, dict] = {}
    for f in findings:
        probs = f["probs"]
        cands = [{"value": c["value"], "probability": c["probability"]}
                 for c in _top(probs, classes[f["attribute"]], 4) if c["value"] != f["suggested"]]
        line = lines.setdefault(f["id"], {"format": FORMAT, "id": f["id"], "title": f["title"], "image": f["image"],
                                          "priority": f["strength"], "accepted": {}, "attributes": {}})
        line["attributes"][f["attribute"]] = {
            "value": f["suggested"], "confidence": round(float(probs.max()), 6), "situation": f["situation"],
            "threshold": None, "review": REASON, "stored": f["stored"], "evidence": f["evidence"],
            "modality_weights": {}, "candidates": cands}
    return list(lines.values())


def audit(catalog: str | Path, s: AuditSettings) -> dict:
    """Write the findings (JSONL, strongest first) and, with s.review_queue, their queue lines."""
    bundle = load_bundle(s.bundle)
    from attrx.service.inference.runtime import load_backend

    predictor = Predictor(bundle, backend=load_backend(bundle))
    attrs = list(s.attributes) or list(predictor.attributes)
    unknown = sorted(set(attrs) - set(predictor.attributes))
    if unknown:
        raise ValueError(f"--attributes {unknown}: the bundle has {', '.join(predictor.attributes)}")
    cat = read_catalog(catalog, attrs)
    reader = ImageReader(ImageLimits.of(None, (), catalog))
    if s.ray is None:
        kept, outputs = _predict(predictor, cat.products, reader, s.batch_size)
    else:
        from attrx.service.scoring.audit_ray import predict_on_ray

        kept, outputs = predict_on_ray(str(bundle.path), cat.products, reader, address=s.ray,
                                       batch_size=s.batch_size, concurrency=s.ray_concurrency,
                                       local_cpus=s.ray_local_cpus)
    keys = image_keys(kept)
    near = _near_pairs(keys)
    findings = [f for a in attrs for f in (_findings(predictor, kept, outputs, _duplicates(kept, keys, near, a), a,
                                                     s.max_p) if kept else [])]
    findings.sort(key=lambda f: (-f["strength"], f["id"], f["attribute"]))
    lines = _queue_lines(findings, {a.name: a.classes for a in bundle.manifest.attributes})
    Path(s.out).write_text("".join(json.dumps({k: v for k, v in f.items() if k != "probs"}) + "\n"
                                   for f in findings))
    if s.review_queue:
        with open(s.review_queue, "a", encoding="utf-8") as q:
            q.write("".join(json.dumps(x) + "\n" for x in lines))
    return {"products": len(cat.products), "audited": len(kept), "skipped": len(cat.products) - len(kept),
            "findings": len(findings), "by_attribute": {a: sum(f["attribute"] == a for f in findings) for a in attrs},
            "out": s.out}
