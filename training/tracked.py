"""`attrx train`, `attrx eval` and `attrx improve`, each in its MLflow run when a tracking URI is given
(attrx.training.tracking says what each run holds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from attrx.training.tracking import Tracker, log_evaluation


def _rank0_uri(uri: str | None) -> str | None:
    """Under torchrun, only rank 0 tracks (the others train the same run)."""
    return uri if int(os.environ.get("RANK", "0")) == 0 else None


def tracked_train(cfg, uri: str | None, experiment: str = "attrx") -> Path:
    """`attrx train` with its MLflow run (see the module docstring); without a uri, just train."""
    from attrx.training.train import train

    t = Tracker(_rank0_uri(uri), experiment)
    with t.run(f"train {Path(cfg.out).name}", "train"):
        t.params(cfg.model_dump(exclude={"progress"}))
        out = train(cfg, tracker=t if t.mlflow is not None else None)
        for name in ("train_log.jsonl", "config.json", "label_variants.json", "calibration.json"):
            if (out / name).is_file() and t.mlflow is not None:
                t.mlflow.log_artifact(str(out / name), artifact_path="checkpoint")
        t.remember(out)
    return out


def tracked_evaluate(checkpoint: str, catalog: str, uri: str | None, experiment: str = "attrx", **options) -> dict:
    """`attrx eval` with its MLflow run, a child of the checkpoint's training run."""
    from attrx.training.evaluation.evaluate import evaluate

    t = Tracker(uri, experiment)
    with t.run(f"eval {Path(checkpoint).name}", "eval", parent=Path(checkpoint)):
        t.params({"checkpoint": str(checkpoint), "catalog": str(catalog),
                  **{k: v for k, v in options.items() if k != "progress"}})
        result = evaluate(checkpoint, catalog, **options)
        log_evaluation(t, Path(result["output"]), result)
    return result


def tracked_improve(cfg, uri: str | None, experiment: str = "attrx") -> Path:
    """`attrx improve` with its MLflow run, a child of the starting checkpoint's run."""
    from attrx.training.improve import improve

    t = Tracker(uri, experiment)
    with t.run(f"improve {Path(cfg.out).name}", "improve", parent=Path(cfg.checkpoint)):
        t.params(cfg.model_dump(exclude={"progress"}))
        out = improve(cfg, tracker=t if t.mlflow is not None else None)
        table = out / "improvement.json"
        if table.is_file() and t.mlflow is not None:
            t.mlflow.log_artifact(str(table), artifact_path="evaluation")
            for attr, rows in json.loads(table.read_text())["attributes"].items():
                t.metrics({f"{attr}.{k}": v for k, v in rows["all"].items() if k != "n"})
        t.remember(out)
    return out
