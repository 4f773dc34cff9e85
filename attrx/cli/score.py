"""`attrx score`: a catalog file scored locally or on Ray Data."""

from __future__ import annotations

import sys


def cmd_score(a) -> None:
    ray_flags = [f for f, v in (("--ray-concurrency", a.ray_concurrency != 1), ("--ray-num-cpus", a.ray_num_cpus != 1),
                                ("--ray-format", a.ray_format is not None), ("--ray-local-cpus", a.ray_local_cpus),
                                ("--ray-block-rows", a.ray_block_rows != 256)) if v]
    if a.ray is not None and a.conflicts:
        raise SystemExit("attrx score: --conflicts is written by local scoring; with --ray, read the "
                         "<attribute>_conflict columns of OUT")
    if a.ray is None and ray_flags:
        raise SystemExit(f"attrx score: without --ray, {', '.join(ray_flags)} would be ignored: add --ray or drop them")
    if a.ray is not None:
        if a.workers is not None:
            raise SystemExit("attrx score: --workers sizes local decoding; with --ray, decoding runs in Ray tasks "
                             "on the CPUs the actors leave (--ray-concurrency x --ray-num-cpus)")
        return _score_on_ray(a)
    from attrx.service.scoring.local import score

    summary = score(a.catalog, a.bundle, a.out, batch_size=a.batch_size, workers=a.workers, resume=a.resume,
                    overwrite=a.overwrite, min_precision=a.min_precision, providers=a.providers, precision=a.precision,
                    max_image_pixels=a.max_image_pixels, progress=not a.quiet, conflicts=a.conflicts,
                    review_queue=a.review_queue, drift_reference=a.drift_reference,
                    drift_thresholds=a.drift_thresholds, drift_min_products=a.drift_min_products)
    if summary["interrupted"]:
        # the work done is saved and its workers are gone; leave without the pool's exit-time
        # cleanup, which can block on results still in its pipes
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


def _score_on_ray(a) -> None:
    from attrx.service.scoring.ray_data import RayNotInstalled, score_ray

    try:
        score_ray(a.catalog, a.bundle, a.out, address=a.ray or None, batch_size=a.batch_size,
                  concurrency=a.ray_concurrency, num_cpus=a.ray_num_cpus, block_rows=a.ray_block_rows,
                  fmt=a.ray_format, resume=a.resume, overwrite=a.overwrite, min_precision=a.min_precision,
                  providers=a.providers,
                  precision=a.precision, max_image_pixels=a.max_image_pixels, local_cpus=a.ray_local_cpus,
                  progress=not a.quiet, review_queue=a.review_queue, drift_reference=a.drift_reference,
                  drift_thresholds=a.drift_thresholds, drift_min_products=a.drift_min_products)
    except RayNotInstalled as e:
        raise SystemExit(f"attrx score: {e}") from None


def _score_parser(sub) -> None:
    c = sub.add_parser("score", help="predict every product of a catalog file (CSV/JSONL/Parquet in and out)")
    c.add_argument("catalog", help="CSV, JSONL or Parquet with id, title, image")
    c.add_argument("--bundle", required=True)
    c.add_argument("--out", required=True, help="output file: .jsonl, .csv or .parquet; bad rows go to OUT.errors.jsonl")
    c.add_argument("--resume", action="store_true", help="skip the ids already in OUT and append the rest")
    c.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--workers", type=int, help="image-decoding processes (default: cores - 1, at least 1)")
    c.add_argument("--min-precision", type=float, help="calibrated precision target for `accepted` (default: lowest)")
    c.add_argument("--providers", default="cpu", help="onnxruntime execution providers: cpu, cuda, tensorrt, auto")
    c.add_argument("--precision", choices=["auto", "fp32", "fp16", "int8"], default="auto",
                   help="which of the bundle's variants runs (auto: int8 on cpu if the bundle has it, fp16 on GPUs)")
    c.add_argument("--max-image-pixels", type=int, help="refuse images declaring more pixels (default 40,000,000)")
    c.add_argument("--conflicts", metavar="FILE",
                   help="also write every attribute whose title and image disagree to FILE (JSONL: id, attribute, "
                        "value, title_says, image_says)")
    c.add_argument("--review-queue", metavar="FILE",
                   help="also write every product with an attribute not accepted to FILE (JSONL, one product per "
                        "line: its values, confidence, situation, candidates and a priority; docs/review-queue.md)")
    c.add_argument("--drift-reference", metavar="FILE",
                   help="compare the catalog with this drift reference (JSON, e.g. from GET /v1/drift's window "
                        "re-baselined, or an earlier run's meta) instead of the bundle's; docs/drift.md")
    c.add_argument("--drift-thresholds", metavar="FILE",
                   help="the drift warning's thresholds (JSON, as attrx serve --drift-thresholds; docs/drift.md)")
    c.add_argument("--drift-min-products", type=int, default=1000, metavar="N",
                   help="warn about drift only for catalogs of at least N products (default 1000: the thresholds "
                        "were chosen for the server's window of 1000; smaller samples are noisier)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    r = c.add_argument_group("Ray Data (pip install 'attrx[ray]'; OUT is then a folder)")
    r.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="score on Ray Data: a cluster's ADDRESS (or RAY_ADDRESS), else a local Ray")
    r.add_argument("--ray-concurrency", type=int, default=1, metavar="N", help="inference actors (default 1)")
    r.add_argument("--ray-num-cpus", type=float, default=1, metavar="CPUS",
                   help="CPUs per inference actor, also its onnxruntime threads (default 1)")
    r.add_argument("--ray-format", choices=["parquet", "jsonl"],
                   help="OUT's files (default: from OUT's name, x.jsonl or x.parquet; Parquet without a suffix)")
    r.add_argument("--ray-local-cpus", type=int, metavar="N", help="CPUs of the local Ray (default: all)")
    r.add_argument("--ray-block-rows", type=int, default=256, metavar="N",
                   help="catalog rows per Ray block, also per output file at most (default 256)")
    c.set_defaults(func=cmd_score)


def add_parsers(sub) -> None:
    _score_parser(sub)
