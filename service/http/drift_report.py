"""A front-end's side of drift telemetry: the comparison of the one window (kept by the inference
process, attrx.service.engine.drift_feed) with the reference, computed when asked (`/metrics`,
`GET /v1/drift`), and the re-baseline (`POST /v1/drift/baseline`)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from attrx.service.contract.drift_stats import (
    Statistics,
    exceeded,
    write_json_atomically,
)
from attrx.service.telemetry.drift_window import DriftBlock


class FrontDrift:
    def __init__(self, manifest, info: dict, reference_path: str | None):
        self.stats = Statistics(manifest)
        self.thresholds = info["thresholds"]  # resolved once, by the inference process
        if self.stats.total != info["total"]:
            raise RuntimeError("the inference process counts other drift statistics than this front-end")
        self.block = DriftBlock(info["total"], name=info["block"])
        self.window = info["window"]
        self.reference_path = reference_path

    def compare(self) -> dict:
        counts, items = self.block.read_window()
        ref, ref_items, source = self.block.read_reference()
        out = self.stats.compare(counts, items, ref)
        out.update(window=self.window, reference={"source": source, "items": ref_items},
                   thresholds=self.thresholds, exceeded=exceeded(out, self.thresholds) if items >= self.window else [],
                   full=items >= self.window)
        return out

    def baseline(self, source: str) -> dict:
        """The reference becomes the window ('traffic') or the bundle's again ('bundle'), for every
        process at once; with --drift-reference, the file is written (or removed) too, so a restart
        keeps it."""
        if source == "bundle":
            ref = self.stats.manifest_reference
            counts = self.stats.check_reference(ref) if ref is not None else None
            self.block.set_reference(counts, int(ref["items"]) if ref else 0, "bundle" if ref else "none")
            if self.reference_path:
                Path(self.reference_path).unlink(missing_ok=True)
            return {"source": "bundle" if ref else "none", "items": int(ref["items"]) if ref else 0, "file": None}
        counts, items = self.block.read_window()
        if items == 0:
            raise ValueError("the window is empty: nothing has been served since the server started")
        ref = self.stats.reference(counts, items, f"traffic {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
        if self.reference_path:
            write_json_atomically(self.reference_path, ref)
        self.block.set_reference(counts, items, "traffic")
        return {"source": "traffic", "items": items, "file": self.reference_path}

    def close(self) -> None:
        self.block.close()
