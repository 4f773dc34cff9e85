"""`attrx score`: a catalog file scored locally or on Ray Data (one ScoreSettings for both)."""

from __future__ import annotations

import sys

from attrx.cli.common import deprecated, settings_flags, settings_from


def cmd_score(a) -> None:
    from attrx.service.scoring.score_settings import ScoreSettings

    if a.quiet:
        a.progress = False
    s = settings_from(ScoreSettings, a)
    if s.ray is not None:
        return _score_on_ray(a.catalog, s)
    from attrx.service.scoring.local import score

    summary = score(a.catalog, s)
    if summary["interrupted"]:
        # the work done is saved and its workers are gone; leave without the pool's exit-time
        # cleanup, which can block on results still in its pipes
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    if summary.get("too_many_errors"):
        print(f"attrx score: {summary['failed']} rows failed, more than --max-errors {s.max_errors} allows "
              f"(each is in {summary['errors']})", file=sys.stderr)
        raise SystemExit(3)


def _score_on_ray(catalog: str, s) -> None:
    from attrx.service.scoring.ray_data import RayNotInstalled, score_ray

    try:
        score_ray(catalog, s)
    except RayNotInstalled as e:
        raise SystemExit(f"attrx score: {e}") from None


def _score_parser(sub) -> None:
    from attrx.service.scoring.score_settings import ScoreSettings

    c = sub.add_parser("score", help="predict every product of a catalog file (CSV/JSONL/Parquet in and out)",
                       description="Exit status: 0 done (rows that cannot be scored are in OUT.errors.jsonl), "
                                   "1 failed, 2 usage error, 3 done but more rows failed than --max-errors "
                                   "allows, 130 interrupted (the work done is kept: --resume).")
    c.add_argument("catalog", help="CSV, JSONL or Parquet with id, title, image")
    settings_flags(c, ScoreSettings, "ATTRX_SCORE_", skip=("progress",))
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    deprecated(c, "--precision", "--variant", "variant")
    c.set_defaults(func=cmd_score)


def cmd_audit(a) -> None:
    import json

    from attrx.service.scoring.audit import AuditSettings, audit

    s = AuditSettings(bundle=a.bundle, out=a.out, attributes=tuple(a.attributes or ()), max_p=a.max_p,
                      review_queue=a.review_queue, batch_size=a.batch_size, ray=a.ray,
                      ray_concurrency=a.ray_concurrency, ray_local_cpus=a.ray_local_cpus)
    from attrx.service.scoring.ray_data import RayNotInstalled

    try:
        summary = audit(a.catalog, s)
    except (OSError, ValueError, RayNotInstalled) as e:
        raise SystemExit(f"attrx audit: {e}") from None
    print(json.dumps(summary))


def _audit_parser(sub) -> None:
    from attrx.cli.common import csv_list

    c = sub.add_parser("audit", help="list products whose stored label is likely wrong, with the evidence",
                       description="Reads the catalog's labels and the bundle's answers (see docs/trust.md#label-"
                                   "findings). Audit rows the bundle did not train on: a bundle is confident in the "
                                   "labels it learned.")
    c.add_argument("catalog", help="CSV, JSONL or Parquet with id, title, image and the attribute columns")
    c.add_argument("--bundle", required=True, help="bundle folder")
    c.add_argument("--out", required=True, help="findings, JSONL, strongest first")
    c.add_argument("--attributes", type=csv_list, help="attributes to audit (default: every bundle attribute the "
                                                       "catalog has)")
    c.add_argument("--max-p", type=float, default=0.1,
                   help="a finding: the model gives the stored label less than this (default 0.1; 0.5 when a "
                        "duplicate image carries another label)")
    c.add_argument("--review-queue", help="also append the findings to this review queue (reason label_suspect)")
    c.add_argument("--batch-size", type=int, default=32, help="products per model run (default 32)")
    g = c.add_argument_group("Ray Data (pip install 'attrx[ray]')")
    g.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="read, key and predict on Ray Data: a cluster's address (or RAY_ADDRESS), else a local Ray; "
                        "the findings are judged on this machine, the same as without --ray")
    g.add_argument("--ray-concurrency", type=int, default=1, help="inference actors (default 1)")
    g.add_argument("--ray-local-cpus", type=int, help="CPUs of the local Ray (default: all)")
    c.set_defaults(func=cmd_audit)


def add_parsers(sub) -> None:
    _score_parser(sub)
    _audit_parser(sub)
