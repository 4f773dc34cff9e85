"""`attrx review` (the review page), `attrx corrections` (answers -> catalog) and `attrx improve`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from attrx.cli.common import need_training_extra


def cmd_review(a) -> None:
    import uvicorn

    from attrx.service.review.web import ReviewConfig, create_app, read_reviewer_keys
    from attrx.service.settings import ServeSettings

    keys = read_reviewer_keys(a.reviewers) if a.reviewers else None
    api_key = None
    if keys is None:  # the service's API key, from the same places `attrx serve` reads it
        api_key = ServeSettings(bundle=a.bundle, api_key_file=a.api_key_file).api_key
    db = a.db or str(Path(a.queue).with_suffix(".decisions.sqlite"))
    app = create_app(ReviewConfig(a.queue, a.bundle, db, keys, api_key, a.lease_seconds))
    review = app.state.review
    who = ("per-reviewer keys from " + a.reviewers if keys else
           "the API key and a name per session" if api_key else "a name per session (no key: set ATTRX_API_KEY "
                                                                  "or --reviewers on a shared machine)")
    print(f"attrx review: {len(review.items)} products in {a.queue}, decisions in {db} "
          f"({review.store.counts()['products_answered']} answered so far); reviewers: {who}\n"
          f"open http://{a.host}:{a.port}/", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level)


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
    from attrx.training.improve import ImproveConfig, improve

    corrections = corrections_catalog(a.corrections, Path(a.out), a.checkpoint)
    fields = ImproveConfig.model_fields
    given = {k: v for k, v in vars(a).items() if k in fields and v is not None}
    cfg = ImproveConfig(**{**given, "corrections": str(corrections)}, progress=not a.quiet)
    improve(cfg)


def _review_parser(sub) -> None:
    r = sub.add_parser("review", help="the review page: answer the queue's products in a browser (keyboard-first)")
    r.add_argument("queue", help="the review queue (attrx score ... --review-queue FILE)")
    r.add_argument("--bundle", required=True, help="the bundle that scored it (its classes and constraints)")
    r.add_argument("--db", help="the decisions store, SQLite (default: QUEUE with .decisions.sqlite)")
    r.add_argument("--reviewers", metavar="FILE", help="per-reviewer keys, lines 'name:key'")
    r.add_argument("--api-key-file", help="one key for everyone (each reviewer then gives a name); default "
                                          "ATTRX_API_KEY, as attrx serve")
    r.add_argument("--lease-seconds", type=float, default=300.0,
                   help="a product shown to a reviewer is theirs this long, then back to the queue (default 300)")
    r.add_argument("--host", default=os.environ.get("ATTRX_HOST", "127.0.0.1"))
    r.add_argument("--port", type=int, default=int(os.environ.get("ATTRX_PORT", "8100")))
    r.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    r.set_defaults(func=cmd_review)
    c = sub.add_parser("corrections", help="export the reviewed values as a catalog file (id,title,image,attributes)")
    c.add_argument("db", help="the decisions store attrx review wrote")
    c.add_argument("--out", required=True, help="CSV to write")
    c.add_argument("--attributes", help="columns, in order (default: every attribute answered)")
    c.set_defaults(func=cmd_corrections)


def _improve_parser(sub) -> None:
    m = sub.add_parser("improve", help="fine-tune a checkpoint on its catalog plus reviewed corrections, "
                                       "recalibrate on the validation split, report before/after")
    m.add_argument("--checkpoint", required=True, help="the checkpoint to start from")
    m.add_argument("--catalog", required=True, help="the training catalog it was trained on")
    m.add_argument("--corrections", required=True, help="the decisions store (attrx review) or a corrections catalog")
    m.add_argument("--out", required=True, help="the new checkpoint folder")
    m.add_argument("--epochs", type=int, help="fine-tuning epochs (default 2)")
    m.add_argument("--lr", type=float, help="peak learning rate (default 5e-4)")
    m.add_argument("--trusted-weight", type=float, help="loss weight of a reviewed label (default 2)")
    m.add_argument("--no-eval", dest="evaluate", action="store_false", default=None,
                   help="skip the before/after evaluation on the test split")
    m.add_argument("--seed", type=int)
    m.add_argument("--threads", type=int)
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=cmd_improve)


def add_parsers(sub) -> None:
    _review_parser(sub)
    _improve_parser(sub)

