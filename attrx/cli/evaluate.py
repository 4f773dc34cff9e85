"""`attrx eval`: a checkpoint's quality per condition, and its calibration."""

from __future__ import annotations

from attrx.cli.common import csv_list, deprecated, input_argument, mlflow_flags, need_training_extra


def cmd_eval(a) -> None:
    need_training_extra()
    from attrx.training.tracked import tracked_evaluate
    from attrx.training.tracking import tracking_uri

    tracked_evaluate(a.checkpoint, a.catalog, tracking_uri(a.mlflow_uri), a.mlflow_experiment, out=a.out, targets=a.min_precision, min_positives=a.min_positives,
             progress=not a.quiet, split=a.split, drop_title=a.drop_title, drop_image=a.drop_image,
             strip_label_words=a.strip_label_words or [], report=a.report, min_support=a.min_support,
             confidence=a.calibration_confidence, decisions=a.decisions,
             delta=None if a.calibration == "bound" else a.delta)


def cmd_variants(a) -> None:
    need_training_extra()
    from attrx.training.data.variant_learning import learn_for_checkpoint

    f = learn_for_checkpoint(a.checkpoint, a.catalog, a.synonyms)
    print(f"label variants written to {f}: edit its \"variants\" (move a word from \"proposed\" to use it), "
          "then `attrx eval` recalibrates with them")


def precision_list(s: str) -> list[float]:
    return [float(x) for x in csv_list(s)]


def _eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="quality per attribute, condition and situation; calibrate the acceptance thresholds")
    input_argument(e, "CSV, JSONL or Parquet with id, title, image and the checkpoint's attribute columns")
    e.add_argument("--checkpoint", required=True, help="checkpoint folder (from attrx train)")
    e.add_argument("--out", help="where metrics.json and plots go (default: the checkpoint folder)")
    e.add_argument("--min-precision", type=precision_list, default=[0.90, 0.95],
                   help="target precisions to calibrate `accepted` for, a list (default 0.90,0.95)")
    deprecated(e, "--precision", "--min-precision", "min_precision", type=precision_list)
    e.add_argument("--min-positives", type=int, default=5,
                   help="recall@precision is macro-averaged over the classes with at least this many positives "
                        "both in the validation split (the thresholds' support) and in the evaluated rows; the "
                        "same rule for --split test and --split all, so the two figures count alike (default 5)")
    e.add_argument("--min-support", type=int, default=10,
                   help="when calibrating: a class needs this many validation positives to get a threshold (default 10)")
    e.add_argument("--calibration", choices=["certified", "bound"], default="certified",
                   help="when calibrating: certified (default): thresholds whose precision reaches the target "
                        "with probability >= 1 - DELTA (Learn-then-Test, a fixed-sequence binomial test), and a small "
                        "situation leans on its attribute's thresholds unless its own rows contradict them; bound: "
                        "the lowest threshold whose one-sided Clopper-Pearson bound at --calibration-confidence "
                        "reaches the target (the rule before certification)")
    e.add_argument("--delta", type=float, default=0.1,
                   help="certified calibration: the chance a threshold may miss its target (default 0.1)")
    e.add_argument("--calibration-confidence", type=float, default=0.5,
                   help="--calibration bound: a threshold's validation precision must reach the target at this "
                        "one-sided Clopper-Pearson confidence; 0 uses the point estimate (default 0.5)")
    e.add_argument("--split", choices=["test", "all"], default="test",
                   help="test: the checkpoint's own test split, thresholds calibrated on its validation split "
                        "(default); all: every row of any catalog with the same attribute columns, at the "
                        "checkpoint's calibrated thresholds")
    e.add_argument("--drop-title", action="store_true", help="condition: evaluate with the titles removed")
    e.add_argument("--drop-image", action="store_true", help="condition: evaluate with the images removed")
    e.add_argument("--strip-label-words", type=csv_list, metavar="ATTR[,ATTR]",
                   help="condition: remove every label word of these attributes from the titles (e.g. colour; "
                        "all: every attribute's)")
    e.add_argument("--decisions", choices=["full", "plain"], default="full",
                   help="full: answers as the bundle decides them (thresholds per situation, conflicts, "
                        "constraints; default); plain: per-class thresholds in every situation, no conflicts, no "
                        "constraints (what bundles before situations did), for comparison")
    e.add_argument("--report", help="also write figures and a Markdown summary (summary.md) into this folder")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    mlflow_flags(e, "the evaluation's metrics, per-situation table and plots")
    e.set_defaults(func=cmd_eval)


def _variants_parser(sub) -> None:
    v = sub.add_parser("variants", help="learn how titles spell the values (label_variants.json) for a checkpoint")
    input_argument(v, "the checkpoint's training catalog (its training split is read)")
    v.add_argument("--checkpoint", required=True, help="checkpoint folder (from attrx train)")
    v.add_argument("--synonyms", metavar="CSV", help="a taxonomy of synonyms, columns attribute,value,synonym")
    v.set_defaults(func=cmd_variants)


def add_parsers(sub) -> None:
    _eval_parser(sub)
    _variants_parser(sub)
