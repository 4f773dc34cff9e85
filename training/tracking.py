"""MLflow runs for `attrx train`, `attrx eval` and `attrx improve` (the optional extra attrx[mlflow]).

Tracking is on when a tracking URI is given (`--mlflow-uri`, else MLFLOW_TRACKING_URI); off, nothing
imports mlflow. Each command is one run in the experiment `--mlflow-experiment` (default "attrx"):

- train: its settings as parameters; per epoch (step = epoch across the stages) train_loss,
  val_loss and val_accuracy.<attribute>; train_log.jsonl, config.json and label_variants.json as
  artifacts. The run's id goes into the checkpoint (`mlflow_run.json`): eval, improve and export
  runs of that checkpoint are its children (mlflow.parentRunId), so the UI shows them under it.
- eval: its options as parameters; per attribute accuracy, macro_f1 and, per target, the accepted
  precision and coverage; `situations.csv` (attribute, situation, target, accepted, products,
  coverage, precision, its 95% interval), metrics.json, calibration.json and the plots as artifacts.
- improve: its settings; the before/after report as artifacts and metrics.
"""

from __future__ import annotations

import csv
import io
import json
import os
from contextlib import contextmanager
from pathlib import Path

RUN_FILE = "mlflow_run.json"
ARTIFACT_SUFFIXES = (".json", ".jsonl", ".png", ".md", ".csv")
MAX_ARTIFACT_BYTES = 20 << 20  # weights and caches stay out; their run folder holds them


class TrackingUnavailable(RuntimeError):
    pass


def tracking_uri(flag: str | None) -> str | None:
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or None


def import_mlflow():
    try:
        import mlflow
    except ImportError:
        raise TrackingUnavailable("MLflow tracking needs the extra: pip install 'attrx[mlflow]'") from None
    return mlflow


def flat(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow parameters: dotted keys, values as text (at most 6000 characters)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat(v, key + "."))
        else:
            out[key] = json.dumps(v)[:6000] if not isinstance(v, str) else v[:6000]
    return out


class Tracker:
    """One MLflow run, or nothing (uri None): every method is then a no-op."""

    def __init__(self, uri: str | None, experiment: str = "attrx"):
        self.uri, self.experiment = uri, experiment
        self.mlflow = import_mlflow() if uri else None
        self.run_id: str | None = None
        self.step = 0

    @contextmanager
    def run(self, name: str, command: str, parent: Path | None = None):
        if self.mlflow is None:
            yield self
            return
        mlflow = self.mlflow
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(self.experiment)
        tags = {"attrx.command": command}
        parent_id = parent_run(parent, self.uri)
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        with mlflow.start_run(run_name=name, tags=tags) as r:
            self.run_id = r.info.run_id
            yield self

    def params(self, values: dict) -> None:
        if self.mlflow is not None:
            self.mlflow.log_params(flat(values))

    def metrics(self, values: dict[str, float | None], step: int | None = None) -> None:
        if self.mlflow is not None:
            self.mlflow.log_metrics({k: float(v) for k, v in values.items() if v is not None}, step=step)

    def epoch(self, rec: dict) -> None:
        """One line of train_log.jsonl, as metrics at the next step."""
        self.step += 1
        acc = {f"val_accuracy.{a}": v for a, v in (rec.get("val_accuracy") or {}).items()}
        self.metrics({"train_loss": rec.get("train_loss"), "val_loss": rec.get("val_loss"), **acc}, step=self.step)

    def artifacts(self, folder: Path, path: str | None = None, recursive: bool = True) -> None:
        """The folder's reports (JSON, JSONL, PNG, Markdown, CSV; not weights), its layout kept."""
        if self.mlflow is None:
            return
        for f in sorted(Path(folder).rglob("*") if recursive else Path(folder).glob("*")):
            if f.is_file() and f.suffix in ARTIFACT_SUFFIXES and f.stat().st_size <= MAX_ARTIFACT_BYTES:
                rel = f.parent.relative_to(folder).as_posix()
                where = "/".join(x for x in (path, rel if rel != "." else None) if x) or None
                self.mlflow.log_artifact(str(f), artifact_path=where)

    def text(self, text: str, name: str) -> None:
        if self.mlflow is not None:
            self.mlflow.log_text(text, name)

    def remember(self, checkpoint: Path) -> None:
        """Write the run's id into the checkpoint, for the runs of later commands on it."""
        if self.run_id:
            (Path(checkpoint) / RUN_FILE).write_text(json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}))


def parent_run(checkpoint: Path | None, uri: str | None) -> str | None:
    f = Path(checkpoint) / RUN_FILE if checkpoint else None
    if f is None or not f.is_file():
        return None
    d = json.loads(f.read_text())
    return d.get("run_id") if d.get("tracking_uri") == uri else None


class EpochLog:
    """train_log.jsonl's file, each line also sent to the tracker as the epoch's metrics."""

    def __init__(self, f, tracker: Tracker):
        self.f, self.tracker = f, tracker

    def write(self, line: str) -> None:
        self.f.write(line)
        if line.strip():
            self.tracker.epoch(json.loads(line))

    def flush(self) -> None:
        self.f.flush()


def evaluation_metrics(m: dict) -> dict[str, float | None]:
    """metrics.json's headline figures, as MLflow metric names."""
    out: dict[str, float | None] = {}
    for attr, a in (m.get("attributes") or {}).items():
        out[f"{attr}.accuracy"] = a.get("accuracy")
        out[f"{attr}.macro_f1"] = a.get("macro_f1")
        for target, s in (a.get("accepted_precision") or {}).items():
            out[f"{attr}.precision_at_{target}"] = s.get("precision")
            out[f"{attr}.coverage_at_{target}"] = s.get("coverage")
    return out


def situation_table(m: dict) -> str:
    """The per-situation acceptance table of metrics.json as CSV (coverage beside every precision)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["attribute", "situation", "target", "accepted", "products", "coverage", "precision", "ci95_low",
                "ci95_high"])
    for attr, a in (m.get("attributes") or {}).items():
        for sit, s in (a.get("situations") or {}).items():
            for target, acc in (s.get("accepted") or {}).items():
                ci = acc.get("ci95") or [None, None]
                w.writerow([attr, sit, target, acc.get("accepted"), acc.get("of"), acc.get("coverage"),
                            acc.get("precision"), ci[0], ci[1]])
    return buf.getvalue()


def log_evaluation(tracker: Tracker, out: Path, metrics: dict) -> None:
    tracker.metrics(evaluation_metrics(metrics))
    tracker.text(situation_table(metrics), "situations.csv")
    # this evaluation's files only: by default they sit in the checkpoint folder, beside its other
    # conditions' eval/ folders, which their own runs logged
    tracker.artifacts(out, "evaluation", recursive=False)
