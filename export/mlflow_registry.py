"""`attrx export --register NAME`: the bundle as a model version in an MLflow model registry.

The bundle folder is logged as the artifacts of an "export" run (a child of the checkpoint's training
run when it was tracked) and registered from there as a new version of NAME. The version's tags carry
what decides whether to promote it, from the manifest:
- `attrx.bundle`, `attrx.family`, `attrx.precision_targets`, `attrx.situation_calibrated`;
- `attrx.parity.fp32`: the exported graph against the checkpoint (max |diff|, tolerance);
- `attrx.gate.<variant>`: each precision variant kept and its measured parity; `attrx.refused.<variant>`:
  the variants export refused, with the reason;
- `attrx.thresholds.<attribute>.<target>`: per situation, the median class threshold (null: nothing
  accepted there) and `attrx.certified.<attribute>.<target>`: which rows certified each situation.

The whole manifest is in the version's files (manifest.json): the tags are for the registry's UI and
searches. `attrx serve --bundle models:/NAME/VERSION` serves it (attrx.service.serving.model_registry).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from attrx.service.contract.bundle import load_bundle
from attrx.training.tracking import Tracker

MAX_TAG = 5000  # MLflow's limit on a tag's value


def _tag(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text[:MAX_TAG]


def _median(ths: list) -> float | None:
    vals = [t for t in ths if t is not None]
    return round(statistics.median(vals), 3) if vals else None


def version_tags(manifest) -> dict[str, str]:
    tags = {"attrx.bundle": f"{manifest.name} {manifest.version}", "attrx.family": manifest.model.family,
            "attrx.precision_targets": manifest.precision_targets,
            "attrx.situation_calibrated": manifest.situation_calibrated,
            "attrx.parity.fp32": {k: manifest.parity.get(k) for k in ("max_abs_diff", "tolerance")}}
    for key, v in manifest.variants.items():
        tags[f"attrx.gate.{key}"] = {k: v.parity.get(k) for k in ("max_abs_diff", "tolerance", "gate", "attempt")
                                    if k in v.parity} or "fp32 reference"
    for key, reason in manifest.refused.items():
        tags[f"attrx.refused.{key}"] = reason
    for a in manifest.attributes:
        for target in manifest.precision_targets:
            key = f"{target:.2f}"
            sits = a.situations or {}
            if sits:
                tags[f"attrx.thresholds.{a.name}.{key}"] = {s: _median(v.thresholds.get(key, [])) for s, v in sits.items()}
                tags[f"attrx.certified.{a.name}.{key}"] = {s: v.certified_by for s, v in sits.items()}
            else:
                tags[f"attrx.thresholds.{a.name}.{key}"] = {"all": _median(a.thresholds.get(key, []))}
    return {k: _tag(v) for k, v in tags.items()}


def register_bundle(bundle: str | Path, name: str, uri: str, *, experiment: str = "attrx",
                    checkpoint: str | Path | None = None) -> str:
    """Log the bundle and register it as a new version of `name`; returns its models:/ URI."""
    b = load_bundle(bundle)
    t = Tracker(uri, experiment)
    mlflow = t.mlflow
    with t.run(f"export {b.manifest.name} {b.manifest.version}", "export",
               parent=Path(checkpoint) if checkpoint else None):
        mlflow.log_artifacts(str(b.path), artifact_path="bundle")
        client = mlflow.MlflowClient()
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name, description="attrx model bundles (attrx export --register)")
        version = client.create_model_version(name, source=mlflow.get_artifact_uri("bundle"), run_id=t.run_id,
                                              tags=version_tags(b.manifest),
                                              description=f"attrx bundle {b.manifest.name} {b.manifest.version}")
    return f"models:/{name}/{version.version}"
