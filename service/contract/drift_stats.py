"""Drift statistics: what a bundle's reference records, and what serving and scoring compare with it.

One definition, used by export (the reference, from the validation split), the inference process
(a sliding window over what it ran), `attrx score` (the whole catalog, local or Ray) and the
tests, so that the same products give the same numbers everywhere.

A product becomes one bin per statistic:
- per attribute: `value` (the model's most probable class), `confidence` (its probability),
  `image_weight` (the image's modality weight), `situation` (of the five in
  attrx.service.contract.situations) and `accepted` (whether that value clears its threshold for
  the situation at the bundle's first precision target, and is not the folded class `other`);
- per product: `title_length` (characters), `image_size` (the shorter side in pixels, as decoded)
  and `image_contrast` (the standard deviation of the normalised pixels: 0 for a blank image), each
  with a bin for "missing".

The input statistics come from the product (`profile`, computed where it is decoded), the others
from the model's outputs. Counts per bin are all that is kept; a comparison is the Jensen-Shannon
distance (base 2, 0 = the same distribution, 1 = disjoint) per statistic, plus the accepted rate
and the situation mix beside the reference's.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attrx.service.contract.bundle import output_names, precision_key
from attrx.service.contract.decisions import rules_from_manifest
from attrx.service.contract.situations import SITUATIONS

REFERENCE_VERSION = 1
PROFILE_KEY = "attrx_profile"  # the extra "input" a decoded product carries: never fed to the model
ATTRIBUTE_STATISTICS = ("value", "confidence", "image_weight", "situation", "accepted")
# bin edges; a missing title or image has its own bin (the first)
INPUT_EDGES = {
    "title_length": (10, 20, 30, 40, 50, 60, 80, 100, 150),
    "image_size": (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256),
    "image_contrast": (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
}
CONFIDENCE_EDGES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
WEIGHT_EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

# Alert thresholds on the Jensen-Shannon distance of a window of DEFAULT_WINDOW products, per
# statistic: chosen by benchmarks/drift.py on a replayed stream of real products held back from
# training (the largest distance any attribute reached there, x 1.5, at least 0.15) and scored on
# another (docs/drift.md). The server exports them as gauges, which deploy/prometheus/alerts.yml
# compares with; `attrx serve --drift-thresholds FILE` replaces any of them, per statistic or per
# attribute and statistic.
DEFAULT_WINDOW = 1000
THRESHOLDS = {"value": 0.52, "confidence": 0.18, "image_weight": 0.32, "situation": 0.25, "accepted": 0.18,
              "title_length": 0.33, "image_size": 0.15, "image_contrast": 0.15}


class ReferenceError(ValueError):
    """A reference that does not fit the bundle (other attributes or classes) or is malformed."""


@dataclass(frozen=True)
class Stat:
    name: str
    attribute: str | None  # None: a product's input statistic
    bins: int
    offset: int  # where its bins start in the flat vector of counts


def _bins(edges: Sequence[float]) -> int:
    return len(edges) + 1


def statistics_of(attributes: Sequence[tuple[str, int]]) -> list[Stat]:
    """The statistics of a bundle with these (attribute, number of classes), in a fixed order."""
    out, offset = [], 0
    for a, n_classes in attributes:
        sizes = {"value": n_classes, "confidence": _bins(CONFIDENCE_EDGES), "image_weight": _bins(WEIGHT_EDGES),
                 "situation": len(SITUATIONS), "accepted": 2}
        for s in ATTRIBUTE_STATISTICS:
            out.append(Stat(s, a, sizes[s], offset))
            offset += sizes[s]
    for s, edges in INPUT_EDGES.items():
        out.append(Stat(s, None, 1 + _bins(edges), offset))
        offset += 1 + _bins(edges)
    return out


def profile(situations: Sequence[int], title: str | None, image_size: tuple[int, int] | None,
            image: np.ndarray | None) -> np.ndarray:
    """A decoded product's input side, float32 [1, attributes + 3]: its situation per attribute
    (an index into SITUATIONS), the title's length, the image's shorter side and its contrast
    (-1: missing). `title` is the normalised one; `image` the preprocessed array [3, S, S]."""
    contrast = -1.0
    if image is not None:
        contrast = float(image[:, ::8, ::8].reshape(len(image), -1).std(axis=1).mean())  # a sample of pixels
    row = [*situations, len(title) if title else -1, min(image_size) if image_size else -1, contrast]
    return np.asarray([row], dtype=np.float32)


def _input_bin(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    return np.where(values < 0, 0, 1 + np.searchsorted(np.asarray(edges, np.float32), values, side="right"))


class Statistics:
    """The statistics of one bundle: products -> bins -> counts -> a comparison with a reference."""

    def __init__(self, manifest):
        self.manifest_reference = manifest.drift_reference
        self.stats = statistics_of([(a.name, len(a.classes)) for a in manifest.attributes])
        self.total = sum(s.bins for s in self.stats)
        where = {n: i for i, n in enumerate(manifest.model.outputs)}
        uni = manifest.model.unimodal
        self._cols = [[where[n] for n in output_names(a.name, uni)][:2] for a in manifest.attributes]
        self.columns = {c for pair in self._cols for c in pair}  # the outputs bins() reads
        rules, _ = rules_from_manifest(manifest, constraints=False, conflicts=False)
        key = precision_key(manifest.precision_targets[0])
        self._thresholds = [r.thresholds[key] for r in rules]
        self._other = [r.other for r in rules]
        self._offsets = np.asarray([s.offset for s in self.stats], dtype=np.int64)

    def answered(self, outputs: Sequence[np.ndarray | None]) -> np.ndarray:
        """[N, A] the probability of each attribute's most probable value (what the accuracy estimate reads)."""
        return np.stack([outputs[pc].max(axis=1) for pc, _ in self._cols], 1)

    def bins(self, outputs: Sequence[np.ndarray | None], profiles: np.ndarray) -> np.ndarray:
        """int64 [N, statistics]: each product's bin per statistic, as indices into the flat counts."""
        n = len(profiles)
        rows = np.arange(n)
        cols = []
        for j, (pc, wc) in enumerate(self._cols):
            probs, weights = outputs[pc], outputs[wc]
            value = probs.argmax(1)
            conf = probs[rows, value]
            sit = profiles[:, j].astype(np.int64)
            thr = self._thresholds[j][sit, value]
            accepted = (conf >= thr) & (value != self._other[j])  # nan thresholds: never accepted
            cols += [value, np.searchsorted(CONFIDENCE_EDGES, conf, side="right"),
                     np.searchsorted(WEIGHT_EDGES, weights[:, 1], side="right"), sit, accepted.astype(np.int64)]
        a = len(self._cols)
        for k, edges in enumerate(INPUT_EDGES.values()):
            cols.append(_input_bin(profiles[:, a + k], edges))
        return np.stack(cols, 1).astype(np.int64) + self._offsets

    def count(self, bins: np.ndarray) -> np.ndarray:
        return np.bincount(bins.ravel(), minlength=self.total).astype(np.int64)

    # -- references ---------------------------------------------------------------------------
    def reference(self, counts: np.ndarray, items: int, source: str) -> dict:
        """A reference (JSON-able) from counts over `items` products."""
        return {"version": REFERENCE_VERSION, "source": source, "items": int(items),
                "statistics": [[s.name, s.attribute, s.bins] for s in self.stats],
                "counts": [int(c) for c in counts]}

    def check_reference(self, ref: dict) -> np.ndarray:
        """The reference's counts; ReferenceError when it was made for other attributes or classes."""
        if not isinstance(ref, dict) or ref.get("version") != REFERENCE_VERSION:
            raise ReferenceError(f"not a drift reference of version {REFERENCE_VERSION}")
        mine = [[s.name, s.attribute, s.bins] for s in self.stats]
        if ref.get("statistics") != mine:
            raise ReferenceError("the reference was made for other attributes or classes than this bundle's")
        counts = np.asarray(ref.get("counts", []), dtype=np.int64)
        if counts.shape != (self.total,) or (counts < 0).any():
            raise ReferenceError(f"the reference's counts must be {self.total} non-negative integers")
        return counts

    # -- comparisons --------------------------------------------------------------------------
    def compare(self, counts: np.ndarray, items: int, reference: np.ndarray | None) -> dict:
        """Per statistic the Jensen-Shannon distance of `counts` from the reference's, the accepted
        rate and the situation mix of both; distances are None without a reference or products."""
        out: dict = {"items": int(items), "attributes": {}, "inputs": {}}
        for s in self.stats:
            part = counts[s.offset:s.offset + s.bins]
            ref = reference[s.offset:s.offset + s.bins] if reference is not None else None
            d = js_distance(part, ref) if ref is not None and items > 0 and ref.sum() > 0 else None
            if s.attribute is None:
                out["inputs"][s.name] = d
                continue
            entry = out["attributes"].setdefault(s.attribute, {"distance": {}})
            entry["distance"][s.name] = d
            if s.name == "accepted":
                entry["accepted_rate"] = _share(part, 1)
                entry["reference_accepted_rate"] = _share(ref, 1) if ref is not None else None
            elif s.name == "situation":
                entry["situations"] = _shares(part)
                entry["reference_situations"] = _shares(ref) if ref is not None else None
        return out


def _share(counts: np.ndarray, k: int) -> float | None:
    total = counts.sum()
    return round(float(counts[k] / total), 6) if total > 0 else None


def _shares(counts: np.ndarray) -> dict[str, float] | None:
    total = counts.sum()
    return {s: round(float(c / total), 6) for s, c in zip(SITUATIONS, counts, strict=True)} if total > 0 else None


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """The Jensen-Shannon distance (base 2: in [0, 1]) between two vectors of counts."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    div = 0.0
    for x in (p, q):
        nz = x > 0
        div += 0.5 * float((x[nz] * np.log2(x[nz] / m[nz])).sum())
    return round(math.sqrt(max(div, 0.0)), 6)


def thresholds_for(stats: Sequence[Stat], overrides: dict[str, float] | None = None) -> dict[str, float]:
    """Per statistic, keyed "attribute.statistic" (or the input statistic's name): the override for
    that key, else for the statistic's kind ("value", "title_length", ...), else THRESHOLDS."""
    o = overrides or {}
    out = {}
    for s in stats:
        key = f"{s.attribute}.{s.name}" if s.attribute else s.name
        out[key] = float(o.get(key, o.get(s.name, THRESHOLDS[s.name])))
    return out


def load_thresholds(path: str | os.PathLike) -> dict[str, float]:
    """A thresholds file: JSON {"value": 0.5, "masterCategory.value": 0.25, ...} (benchmarks/drift.py
    writes one fitted on a stream of your own products)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReferenceError(f"drift thresholds {path}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) and 0 < v <= 1 for v in data.values()):
        raise ReferenceError(f"drift thresholds {path}: must map statistics to numbers in (0, 1]")
    unknown = [k for k in data if k.rsplit(".", 1)[-1] not in THRESHOLDS]
    if unknown:
        raise ReferenceError(f"drift thresholds {path}: unknown statistics {unknown[:5]}; the statistics are "
                             f"{', '.join(THRESHOLDS)} (optionally as attribute.statistic)")
    return {k: float(v) for k, v in data.items()}


def keyed_distances(comparison: dict) -> dict[str, float]:
    """A comparison's distances keyed as thresholds are ("attribute.statistic", or the input
    statistic's name), those it has a figure for."""
    out = {f"{a}.{s}": d for a, e in comparison["attributes"].items() for s, d in e["distance"].items()
           if d is not None}
    out.update({s: d for s, d in comparison["inputs"].items() if d is not None})
    return out


def exceeded(comparison: dict, thresholds: dict[str, float]) -> list[str]:
    """'attribute.statistic distance > threshold' for each distance over its threshold (thresholds_for)."""
    return [f"{k} {d:.3f} > {thresholds[k]:g}" for k, d in keyed_distances(comparison).items() if d > thresholds[k]]


# -- reference files ---------------------------------------------------------------------------------
def load_reference_file(path: str | os.PathLike) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise ReferenceError(f"drift reference {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ReferenceError(f"drift reference {path}: not JSON ({e})") from None


def write_json_atomically(path: str | os.PathLike, data: dict, indent: int | None = None) -> None:
    """A crash leaves the old file or the new one, never half of one (a reference, a meta file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def starting_reference(manifest, stats: Statistics, path: str | os.PathLike | None
                       ) -> tuple[np.ndarray | None, int, str]:
    """(counts, products, source): the reference file when it exists, else the bundle's, else none.
    ReferenceError, naming the file, when it does not fit the bundle."""
    if path and Path(path).is_file():
        ref = load_reference_file(path)
        try:
            return stats.check_reference(ref), int(ref["items"]), "file"
        except ReferenceError as e:
            raise ReferenceError(f"drift reference {path}: {e}") from None
    if manifest.drift_reference is not None:
        return stats.check_reference(manifest.drift_reference), int(manifest.drift_reference["items"]), "bundle"
    return None, 0, "none"
