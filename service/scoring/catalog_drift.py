"""Drift for a scored catalog: the same statistics as the server's window
(attrx.service.contract.drift_stats), counted over every product `attrx score` scored, compared
with the reference and written into `<out>.meta.json` under "drift"; a short warning on stderr
names the distances over their thresholds.

The counts are kept with the comparison, so `--resume` adds the new rows to them: what the meta
file says covers every row of the output. A run killed with -9 never wrote its counts; the resumed
run's comparison then covers the rows it scored itself (`items` says how many).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from attrx.service.contract.drift_stats import (
    DEFAULT_WINDOW,
    ReferenceError,
    Statistics,
    exceeded,
    load_thresholds,
    starting_reference,
    thresholds_for,
    write_json_atomically,
)
from attrx.service.contract.situations import SITUATIONS
from attrx.service.telemetry.estimate import EstimateSums


class CatalogDrift:
    def __init__(self, manifest, reference_file: str | os.PathLike | None = None,
                 thresholds_file: str | os.PathLike | None = None, min_products: int = DEFAULT_WINDOW):
        self.stats = Statistics(manifest)
        self.thresholds = thresholds_for(self.stats.stats, load_thresholds(thresholds_file) if thresholds_file else None)
        self.ref, self.ref_items, self.source = starting_reference(manifest, self.stats, reference_file)
        self.counts = np.zeros(self.stats.total, np.int64)
        self.items = 0
        self.estimate = EstimateSums([a.name for a in manifest.attributes], SITUATIONS)
        self.min_products = min_products  # the thresholds were chosen for windows of DEFAULT_WINDOW products

    @classmethod
    def start(cls, manifest, meta_file: Path, resume: bool, reference_file=None, thresholds_file=None,
              min_products: int = DEFAULT_WINDOW) -> CatalogDrift:
        """For a run writing `meta_file`: with resume, the counts it recorded so far (read before the
        run's own meta replaces the file)."""
        drift = cls(manifest, reference_file, thresholds_file, min_products)
        if resume:
            drift.resume_from(meta_file)
        return drift

    def add(self, outputs: list[np.ndarray], profiles: np.ndarray) -> None:
        self.add_counts(self.stats.count(self.stats.bins(outputs, profiles)), len(profiles))
        add_estimate(self.estimate, self.stats, outputs, profiles)

    def add_counts(self, counts: np.ndarray, items: int, estimate: np.ndarray | None = None) -> None:
        self.counts += counts
        self.items += int(items)
        if estimate is not None:
            self.estimate.add_vector(estimate)

    def resume_from(self, meta_file: Path) -> None:
        """The counts an earlier run of this output recorded (none when it was killed before)."""
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            old = meta.get("drift") or {}
            sums = (meta.get("accuracy_estimate") or {}).get("sums")
            self.add_counts(self.stats.check_reference(old["counts"]), old["counts"]["items"],
                            np.asarray(sums) if sums and len(sums) == self.estimate.size else None)
        except (OSError, ValueError, KeyError, TypeError, ReferenceError):
            pass

    def comparison(self) -> dict:
        out = self.stats.compare(self.counts, self.items, self.ref)
        judged = self.items >= self.min_products
        out.update(reference={"source": self.source, "items": self.ref_items}, thresholds=self.thresholds,
                   judged=judged, exceeded=exceeded(out, self.thresholds) if judged else [],
                   counts=self.stats.reference(self.counts, self.items, "scored catalog"))
        return out

    def finish(self, meta_file: Path) -> dict:
        """Into the meta file (atomically), and the warning; returns the comparison."""
        cmp = self.comparison()
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        meta["drift"] = cmp
        meta["accuracy_estimate"] = {"note": ESTIMATE_NOTE, "attributes": self.estimate.summary(),
                                     "sums": self.estimate.sums.ravel().tolist()}
        write_json_atomically(meta_file, meta, indent=2)
        if cmp["exceeded"]:
            print(f"attrx score: WARNING: the catalog drifted from the model's reference ({self.source}): "
                  + "; ".join(cmp["exceeded"][:6]) + (" ..." if len(cmp["exceeded"]) > 6 else "")
                  + f". Review a sample before trusting 'accepted' (docs/drift.md); details in {meta_file}",
                  file=sys.stderr, flush=True)
        return cmp


ESTIMATE_NOTE = ("an ESTIMATE that assumes calibrated probabilities: the mean probability of the values answered, "
                 "with its 95% interval; it cannot see label shift (docs/trust.md)")


def add_estimate(sums: EstimateSums, stats: Statistics, outputs: list[np.ndarray], profiles: np.ndarray) -> None:
    """The products' answered probabilities (the most probable value's) and situations into sums."""
    conf = stats.answered(outputs)
    sums.add(conf, profiles[:, :conf.shape[1]].astype(np.int64))


def sum_parts(folder: Path, total: int, estimate_size: int = 0) -> tuple[np.ndarray, int, np.ndarray]:
    """The Ray actors' partial counts (one .npy per actor: counts, the estimate's sums, then the
    number of products)."""
    counts, items, est = np.zeros(total, np.int64), 0, np.zeros(estimate_size, np.int64)
    for part in sorted(folder.glob("part-*.npy")):
        arr = np.load(part)
        counts += arr[:total]
        est += arr[total:total + estimate_size]
        items += int(arr[-1])
    return counts, items, est


def save_part(path: Path, counts: np.ndarray, items: int, estimate: np.ndarray | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, np.concatenate([counts, estimate if estimate is not None else [], [items]]).astype(np.int64))
    os.replace(tmp, path)
