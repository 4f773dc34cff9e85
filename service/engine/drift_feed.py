"""The inference process's side of drift telemetry: the bins of every batch the model ran go into
the one sliding window (attrx.service.telemetry.drift_window); the reference starts as the file
`--drift-reference` names, when it exists, else the bundle's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attrx.service.contract.drift_stats import PROFILE_KEY, Statistics
from attrx.service.telemetry.drift_window import DriftBlock, Window, load_reference_file


def initial_reference(settings, manifest, stats: Statistics) -> tuple[np.ndarray | None, int, str]:
    """(counts, products, source): the reference file when it exists, else the bundle's, else none.
    A file that does not fit the bundle stops the server with the reason (ValueError)."""
    path = settings.drift_reference
    if path and Path(path).is_file():
        ref = load_reference_file(path)
        try:
            return stats.check_reference(ref), int(ref["items"]), "file"
        except ValueError as e:
            raise ValueError(f"drift reference {path}: {e}") from None
    if manifest.drift_reference is not None:
        return stats.check_reference(manifest.drift_reference), int(manifest.drift_reference["items"]), "bundle"
    return None, 0, "none"


class EngineDrift:
    def __init__(self, settings, manifest):
        self.stats = Statistics(manifest)
        self.block = DriftBlock(self.stats.total)
        self.block.set_reference(*initial_reference(settings, manifest, self.stats))
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
