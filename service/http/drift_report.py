"""A front-end's side of drift telemetry: the comparison of the one window (kept by the inference
process, attrx.service.engine.drift_feed) with the reference, computed when asked (`/metrics`,
`GET /v1/drift`), and what a re-baseline (`POST /v1/drift/baseline`, done by the inference process,
the reference's one writer) reports. A front-end only reads the block."""

from __future__ import annotations

from attrx.service.contract.drift_stats import Statistics, exceeded
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

    def baselined(self, source: str, items: int) -> dict:
        """What a re-baseline done by the inference process (its one writer) reports."""
        if source == "bundle":
            _, ref_items, now = self.block.read_reference()
            return {"source": now, "items": ref_items, "file": None}
        return {"source": "traffic", "items": items, "file": self.reference_path}

    def close(self) -> None:
        self.block.close()
