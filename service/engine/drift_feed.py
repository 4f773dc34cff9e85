"""The inference process's side of drift telemetry: the bins of every batch the model ran go into
the one sliding window (attrx.service.telemetry.drift_window); the reference starts as the file
`--drift-reference` names, when it exists, else the bundle's."""

from __future__ import annotations

import numpy as np

from attrx.service.contract.drift_stats import PROFILE_KEY, Statistics, load_thresholds, starting_reference
from attrx.service.telemetry.drift_window import DriftBlock, Window


class EngineDrift:
    def __init__(self, settings, manifest):
        self.stats = Statistics(manifest)
        if settings.drift_thresholds:  # the front-ends read it: a bad file stops the server at startup
            load_thresholds(settings.drift_thresholds)
        self.block = DriftBlock(self.stats.total)
        self.block.set_reference(*starting_reference(manifest, self.stats, settings.drift_reference))
        self.window = Window(settings.drift_window, len(self.stats.stats), self.block)

    @property
    def info(self) -> dict:
        return {"block": self.block.name, "total": self.stats.total, "window": self.window.size}

    def observe(self, outputs: list[np.ndarray], profiles: np.ndarray) -> None:
        """A batch's products (their outputs and profiles), once per batch."""
        self.window.add(self.stats.bins(outputs, profiles))


def batch_profiles(jobs, rows: list[int]) -> np.ndarray:
    """The profiles of the batch's counted products, from their slots (still theirs: not yet answered)."""
    return np.concatenate([jobs[r].inputs[PROFILE_KEY] for r in rows])
