"""`attrx review` (the review page), `attrx corrections` (answers -> catalog) and `attrx improve`."""

from __future__ import annotations

import json
from pathlib import Path

from attrx.cli.common import (
    deprecated,
    input_argument,
    mlflow_flags,
    need_training_extra,
    settings_flags,
    settings_from,
)


def cmd_review(a) -> None:
    from attrx.service.review.review_settings import ReviewSettings
    from attrx.service.review.run import run_review

    run_review(a.queue, settings_from(ReviewSettings, a))


def cmd_review_keys(a) -> None:
    from attrx.service.review.keys import add_reviewer

    key = add_reviewer(a.reviewers, a.name, a.role)
    print(f"attrx review-keys: {a.name} ({a.role}) added to {a.reviewers}. Their key, shown this once and stored "
          f"nowhere (the file keeps a salted hash):\n{key}", flush=True)


def cmd_corrections(a) -> None:
    from attrx.service.review.store import DecisionStore, export_catalog

    if not Path(a.db).is_file():
        raise FileNotFoundError(f"{a.db}: no decisions store (attrx review writes it)")
    store = DecisionStore(a.db)
    n = export_catalog(store, a.out, a.attributes.split(",") if a.attributes else None)
    print(f"attrx corrections: {n} reviewed products written to {a.out} (id, title, image, one column per "
          "attribute; an attribute left without an answer is empty)")


def corrections_catalog(path: str, out: Path, checkpoint: str) -> Path:
    """A corrections argument as a catalog file: a decisions store is exported first, with a column
    for each of the checkpoint's attributes."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--corrections {path}: no such file (a decisions store or a catalog file)")
    with open(p, "rb") as f:  # the header only: a corrections CSV or store can be large
        magic = f.read(16)
    if magic != b"SQLite format 3\x00":
        return p
    from attrx.service.review.store import DecisionStore, export_catalog

    config = Path(checkpoint) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{checkpoint} is not an attrx checkpoint: config.json is missing")
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "corrections.csv"
    export_catalog(DecisionStore(p), csv_path, list(json.loads(config.read_text())["attributes"]))
    return csv_path


def cmd_improve(a) -> None:
    need_training_extra()
    from attrx.training.improve import ImproveConfig
    from attrx.training.tracked import tracked_improve
    from attrx.training.tracking import tracking_uri

    corrections = corrections_catalog(a.corrections, Path(a.out), a.checkpoint)
    fields = ImproveConfig.model_fields
    given = {k: v for k, v in vars(a).items() if k in fields and v is not None}
    cfg = ImproveConfig(**{**given, "corrections": str(corrections)}, progress=not a.quiet)
    tracked_improve(cfg, tracking_uri(a.mlflow_uri), a.mlflow_experiment)


def _review_parser(sub) -> None:
    r = sub.add_parser("review", help="the review page: answer the queue's products in a browser (keyboard-first)",
                       description="Every setting is also an environment variable ATTRX_REVIEW_<SETTING> (its own "
                                   "prefix: the API server's ATTRX_HOST and ATTRX_PORT do not apply).")
    from attrx.service.review.review_settings import ReviewSettings

    r.add_argument("queue", help="the review queue (attrx score ... --review-queue FILE)")
    settings_flags(r, ReviewSettings, "ATTRX_REVIEW_")
    deprecated(r, "--lease-seconds", "--lease-s", "lease_s", type=float)
    r.set_defaults(func=cmd_review)
    k = sub.add_parser("review-keys", help="add a reviewer to a reviewers file and print their key once")
    k.add_argument("action", choices=["add"], help="add: a new reviewer with a new random key")
    k.add_argument("name", help="the reviewer's name (shown beside their decisions)")
    k.add_argument("--reviewers", required=True, help="the reviewers file (created, mode 0600, if missing)")
    k.add_argument("--role", choices=["reviewer", "reviser"], default="reviewer",
                   help="reviser: may also revise answered products (default reviewer)")
    k.set_defaults(func=cmd_review_keys)
    c = sub.add_parser("corrections", help="export the reviewed values as a catalog file (id,title,image,attributes)")
    c.add_argument("db", help="the decisions store attrx review wrote")
    c.add_argument("--out", required=True, help="CSV to write")
    c.add_argument("--attributes", help="columns, in order (default: every attribute answered)")
    c.set_defaults(func=cmd_corrections)


def cmd_review_export(a) -> None:
    from attrx.service.contract.bundle import load_bundle
    from attrx.service.review.label_studio import export_tasks
    from attrx.service.review.queue_reader import read_queue

    if a.image_url_prefix and not a.document_root:
        raise ValueError("--image-url-prefix replaces the --document-root part of each image path: give both")
    summary = export_tasks(read_queue(a.queue), load_bundle(a.bundle, verify_hashes=False).manifest, a.out,
                           document_root=a.document_root, url_prefix=a.image_url_prefix)
    print(json.dumps(summary))


def cmd_review_import(a) -> None:
    from attrx.service.review.label_studio import import_annotations
    from attrx.service.review.store import DecisionStore

    print(json.dumps(import_annotations(a.export, DecisionStore(a.db))))


def _label_studio_parsers(sub) -> None:
    e = sub.add_parser("review-export", help="the review queue as Label Studio tasks with attrx's answers as "
                                             "predictions, and its labelling configuration (also: attrx review "
                                             "export)")
    e.add_argument("queue", help="the review queue (attrx score ... --review-queue FILE)")
    e.add_argument("--format", choices=["label-studio"], default="label-studio", help="the tool (label-studio)")
    e.add_argument("--bundle", required=True, help="the bundle that answered (its attributes, values and version)")
    e.add_argument("--out", required=True, help="folder for tasks.json and label_config.xml")
    e.add_argument("--document-root", help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: local images are "
                                           "given as /data/local-files/?d=<path under it>")
    e.add_argument("--image-url-prefix", help="instead, images are published here: URL + <path under "
                                              "--document-root>")
    e.set_defaults(func=cmd_review_export)
    i = sub.add_parser("review-import", help="Label Studio's JSON export into the decisions store, as corrections "
                                             "attrx improve learns from (also: attrx review import)")
    i.add_argument("export", help="Label Studio's JSON export (Export > JSON)")
    i.add_argument("--db", required=True, help="the decisions store (created if missing; attrx review's --db)")
    i.set_defaults(func=cmd_review_import)


def _improve_parser(sub) -> None:
    m = sub.add_parser("improve", help="fine-tune a checkpoint on its catalog plus reviewed corrections, "
                                       "recalibrate on the validation split, report before/after")
    input_argument(m, "the training catalog the checkpoint was trained on")
    m.add_argument("--checkpoint", required=True, help="the checkpoint to start from")
    m.add_argument("--corrections", required=True, help="the decisions store (attrx review) or a corrections catalog")
    m.add_argument("--out", required=True, help="the new checkpoint folder")
    m.add_argument("--epochs", type=int, help="fine-tuning epochs (default 2)")
    m.add_argument("--lr", type=float, help="peak learning rate (default 5e-4)")
    m.add_argument("--trusted-weight", type=float, help="loss weight of a reviewed label (default 2)")
    m.add_argument("--no-eval", dest="evaluate", action="store_false", default=None,
                   help="skip the before/after evaluation on the test split")
    m.add_argument("--seed", type=int, help="random seed (default 0)")
    m.add_argument("--threads", type=int, help="torch CPU threads (default: every core this process may use)")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    mlflow_flags(m, "the fine-tuning's parameters, per-epoch metrics and before/after table")
    m.set_defaults(func=cmd_improve)


def add_parsers(sub) -> None:
    _review_parser(sub)
    _label_studio_parsers(sub)
    _improve_parser(sub)

