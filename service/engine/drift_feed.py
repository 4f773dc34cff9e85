"""The inference process's side of drift telemetry: every batch the model ran goes into the one
sliding window (attrx.service.telemetry.drift_window); the reference starts as the file
`--drift-reference` names, when it exists, else the bundle's.

Per batch, the batcher's thread only keeps the batch's outputs and profiles (an append: the
outputs are the backend's own copies, the profiles are copied out of the slots). A thread folds
what was kept into the window every `interval` seconds in one vectorised pass, so that binning
costs a few numpy calls per interval instead of per batch (benchmarks/drift_cost.py)."""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from attrx.service.contract.drift_stats import (
    PROFILE_KEY,
    Statistics,
    load_thresholds,
    starting_reference,
    thresholds_for,
    write_json_atomically,
)
from attrx.service.contract.situations import SITUATIONS
from attrx.service.telemetry.drift_window import DriftBlock, Window
from attrx.service.telemetry.estimate import AccuracyEstimate

INTERVAL_S = 0.1
ESTIMATE_EVERY_S = 1.0


class EngineDrift:
    def __init__(self, settings, manifest, interval: float = INTERVAL_S, on_estimate=None):
        """on_estimate: called with the accuracy estimate of the window (telemetry/estimate.py), at
        most once per ESTIMATE_EVERY_S, from the fold thread."""
        self.stats = Statistics(manifest)
        self.estimate = AccuracyEstimate([a.name for a in manifest.attributes], SITUATIONS, settings.drift_window)
        self.on_estimate, self._estimated, self._dirty = on_estimate, 0.0, False
        # read here once (a bad file stops the server at startup) and handed to the front-ends
        self.thresholds = thresholds_for(self.stats.stats, load_thresholds(settings.drift_thresholds)
                                         if settings.drift_thresholds else None)
        self.block = DriftBlock(self.stats.total)
        self.block.set_reference(*starting_reference(manifest, self.stats, settings.drift_reference))
        self.window = Window(settings.drift_window, len(self.stats.stats), self.block)
        self.pending: deque = deque()
        self.interval = interval
        self._baseline_lock = threading.Lock()  # one link thread at a time writes the reference
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def info(self) -> dict:
        return {"block": self.block.name, "total": self.stats.total, "window": self.window.size,
                "thresholds": self.thresholds}

    def observe(self, outputs: list[np.ndarray], profiles: np.ndarray) -> None:
        """A batch's products (their outputs and profiles): kept until the next fold."""
        self.pending.append((outputs, profiles))

    def fold(self) -> None:
        """What was kept since the last fold, into the window, in batch order; the accuracy estimate
        is published when it changed and a second has passed since it last was."""
        parts = []
        while self.pending:
            parts.append(self.pending.popleft())
        if parts:
            cols = self.stats.columns
            outputs = [np.concatenate([p[0][c] for p in parts]) if c in cols else None
                       for c in range(len(parts[0][0]))]
            profiles = np.concatenate([p[1] for p in parts])
            self.window.add(self.stats.bins(outputs, profiles))
            self._estimate(outputs, profiles)
        now = time.monotonic()
        if self._dirty and self.on_estimate is not None and now - self._estimated >= ESTIMATE_EVERY_S:
            self._estimated, self._dirty = now, False
            self.on_estimate(self.estimate.summary())

    def _estimate(self, outputs, profiles: np.ndarray) -> None:
        """The window's answered probabilities (the most probable value's: constraints, decided in
        the front-ends, change few) and situations, into the accuracy estimate."""
        conf = self.stats.answered(outputs)
        self.estimate.add(conf, profiles[:, :conf.shape[1]].astype(np.int64))
        self._dirty = True

    def rebaseline(self, source: str, reference_path: str | None) -> int:
        """The reference becomes the window ('traffic') or the bundle's again ('bundle'), for every
        process at once; with --drift-reference, the file is written (or removed) too, so a restart
        keeps it. Returns the reference's products; ValueError for an empty window, OSError when the
        file cannot be written (the reference in memory is then unchanged)."""
        with self._baseline_lock:
            if source == "bundle":
                ref = self.stats.manifest_reference
                counts = self.stats.check_reference(ref) if ref is not None else None
                if reference_path:
                    Path(reference_path).unlink(missing_ok=True)
                items = int(ref["items"]) if ref else 0
                self.block.set_reference(counts, items, "bundle" if ref else "none")
                return items
            counts, items = self.block.read_window()
            if items == 0:
                raise ValueError("the window is empty: nothing has been served since the server started")
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            if reference_path:
                write_json_atomically(reference_path, self.stats.reference(counts, items, f"traffic {stamp}"))
            self.block.set_reference(counts, items, "traffic")
            return items

    def start(self) -> None:
        def run():
            while not self._stop.wait(self.interval):
                self.fold()

        self._thread = threading.Thread(target=run, name="attrx-drift", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.block.close()


def batch_profiles(jobs, rows: list[int]) -> np.ndarray:
    """The profiles of the batch's counted products, copied from their slots (still theirs: not yet answered)."""
    return np.concatenate([jobs[r].inputs[PROFILE_KEY] for r in rows])
