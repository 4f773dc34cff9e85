"""The `attrx` command. Training commands import torch lazily, so the serving install works without it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _csv_list(s: str) -> list[str]:
    items = [x.strip() for x in s.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. colour,pattern")
    return items


def _need_training_extra() -> None:
    # OpenMP threads that wait for work sleep instead of spinning: two trainings sharing a machine
    # then slow each other about 2x rather than fighting for the cores (set it yourself to override)
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise SystemExit(
            f"attrx: this command needs the training extra ({e.name} is not installed): "
            "pip install torch==2.13.0 && pip install 'attrx[train]'"
        ) from None


def cmd_demo_data(a) -> None:
    from attrx.training.demo import write_demo_catalog

    path = write_demo_catalog(a.out, n=a.n, seed=a.seed, progress=not a.quiet)
    print(f"demo catalog: {path} ({a.n} products, seed {a.seed})")


def cmd_train(a) -> None:
    _need_training_extra()
    from attrx.training.train import TrainConfig, train

    fields = TrainConfig.model_fields
    cfg = TrainConfig(**{k: v for k, v in vars(a).items() if k in fields and v is not None}, progress=not a.quiet)
    train(cfg)


def cmd_pretrain(a) -> None:
    _need_training_extra()
    from attrx.training.pretrain import PretrainConfig, pretrain

    fields = PretrainConfig.model_fields
    pretrain(PretrainConfig(**{k: v for k, v in vars(a).items() if k in fields and v is not None},
                            progress=not a.quiet))


def cmd_eval(a) -> None:
    _need_training_extra()
    from attrx.training.evaluate import evaluate

    evaluate(a.checkpoint, a.catalog, out=a.out, targets=a.precision, min_positives=a.min_positives,
             progress=not a.quiet, split=a.split, drop_title=a.drop_title, drop_image=a.drop_image,
             strip_label_words=a.strip_label_words or [], report=a.report, min_support=a.min_support,
             confidence=a.calibration_confidence)


def cmd_export(a) -> None:
    _need_training_extra()
    from attrx.export.build import export_bundle
    from attrx.export.onnx_export import ExportError

    try:
        result = export_bundle(a.checkpoint, a.out, name=a.name, version=a.version, precisions=a.precision,
                               attention=a.attention, opset=a.opset, tolerance=a.tolerance, catalog=a.catalog)
    except ExportError as e:
        raise SystemExit(f"attrx export: {e}") from None
    if a.tensorrt:
        from attrx.export.tensorrt_engine import build_engine

        build_engine(result.path, max_batch_size=a.max_batch_size)
    if result.refused:
        refused = "; ".join(f"{k}: {v}" for k, v in result.refused.items())
        print(f"attrx export: written without {', '.join(result.refused)} ({refused})", file=sys.stderr)
        raise SystemExit(2)


def cmd_build_engine(a) -> None:
    from attrx.export.tensorrt_engine import EngineBuildError, build_engine

    try:
        build_engine(a.bundle, max_batch_size=a.max_batch_size, opt_batch_size=a.opt_batch_size,
                     precision=a.precision, workspace_gib=a.workspace_gib)
    except EngineBuildError as e:
        raise SystemExit(f"attrx build-engine: {e}") from None


def cmd_validate_bundle(a) -> None:
    from attrx.service.contract.bundle import BundleError, load_bundle

    try:
        b = load_bundle(a.bundle)
    except BundleError as e:
        raise SystemExit(f"attrx: invalid bundle: {e}") from None
    m = b.manifest
    refused = f"; refused: {', '.join(m.refused)}" if m.refused else ""
    print(f"bundle {a.bundle} is valid: {m.name} {m.version} ({m.model.family}, schema v{m.schema_version}, "
          f"{m.model.attention} attention), attributes {', '.join(x.name for x in m.attributes)}; "
          f"variants {', '.join(m.variants)}{refused}")


def cmd_serve(a) -> None:
    from attrx.service.contract.bundle import BundleError, load_bundle
    from attrx.service.serving.supervisor import serve
    from attrx.service.settings import ServeSettings

    if a.api_key is not None:
        print("attrx serve: warning: --api-key shows in the process list (/proc/PID/cmdline, ps); "
              "set ATTRX_API_KEY or use --api-key-file instead", file=sys.stderr, flush=True)
    fields = ServeSettings.model_fields
    settings = ServeSettings(**{k: v for k, v in vars(a).items() if k in fields and v is not None})
    try:
        load_bundle(settings.bundle)
    except BundleError as e:
        raise SystemExit(f"attrx serve: {e}") from None
    url = f"http://{settings.host}:{settings.port}"
    auth = ' -H "Authorization: Bearer $ATTRX_API_KEY"' if settings.api_key else ""
    print(f"attrx: serving {settings.bundle} at {url} (API docs: {url}/docs, metrics: {url}/metrics)\n"
          f"try:\n  curl -s{auth} -F 'title=Roadster Men Blue Striped T-Shirt' -F image=@some-product.jpg {url}/v1/extract\n"
          f"  curl -s{auth} -H 'Content-Type: application/json' -d '{{\"title\": \"Velora Women Red Dress\"}}' "
          f"{url}/v1/extract", flush=True)
    raise SystemExit(serve(settings, log_level=a.log_level, access_log=a.access_log))


def cmd_score(a) -> None:
    ray_flags = [f for f, v in (("--ray-concurrency", a.ray_concurrency != 1), ("--ray-num-cpus", a.ray_num_cpus != 1),
                                ("--ray-format", a.ray_format != "parquet"), ("--ray-local-cpus", a.ray_local_cpus),
                                ("--ray-block-rows", a.ray_block_rows != 256)) if v]
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
                    max_image_pixels=a.max_image_pixels, progress=not a.quiet)
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
                  progress=not a.quiet)
    except RayNotInstalled as e:
        raise SystemExit(f"attrx score: {e}") from None


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    from attrx.service.settings import ServeSettings

    for name, f in ServeSettings.model_fields.items():
        ann = f.annotation
        typ = ann if ann in (int, float, str) else str
        default = f.default_factory() if f.default_factory is not None else f.default
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=None,
                       help=f"{f.description or ''} (env ATTRX_{name.upper()}; default {default})".strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attrx", description="Product attribute extraction from titles and images.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _demo_data_parser(sub)
    _train_parser(sub)
    _pretrain_parser(sub)
    _eval_parser(sub)
    _export_parser(sub)
    _serve_parser(sub)
    _score_parser(sub)
    _validate_bundle_parser(sub)
    return p


def _demo_data_parser(sub) -> None:
    d = sub.add_parser("demo-data", help="write the synthetic demo catalog (catalog.csv + images/)")
    d.add_argument("--out", required=True, type=Path)
    d.add_argument("--n", type=int, default=3000, help="number of products (default 3000)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo_data)


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="train a CMA-CLIP multi-task model (three stages)")
    t.add_argument("--catalog", required=True, help="CSV, JSONL or Parquet with id,title,image,<attributes>")
    t.add_argument("--attributes", required=True, type=_csv_list, help="attribute columns, e.g. colour,pattern")
    t.add_argument("--out", required=True, help="checkpoint folder")
    t.add_argument("--family", choices=["cma-clip", "momo"],
                   help="model family (default: the config's; --family momo defaults to --config momo-tiny)")
    t.add_argument("--config", default="tiny",
                   help="tiny, base, cma-clip-b32, momo-tiny, momo-base, or a JSON file (default tiny)")
    t.add_argument("--init-from", help="local Hugging Face CLIP folder for the text and image towers")
    t.add_argument("--tokenizer", help="tokenizer.json to use instead of training one on the titles")
    t.add_argument("--vocab-size", type=int, help="WordPiece vocabulary size when training a tokenizer")
    for stage, (ep, lr) in {"warmup": (2, 1e-3), "e2e": (10, 5e-4), "tune": (2, 5e-4)}.items():
        t.add_argument(f"--{stage}-epochs", type=int, help=f"epochs of the {stage} stage (default {ep}; 0 skips it)")
        t.add_argument(f"--{stage}-lr", type=float, help=f"peak learning rate of the {stage} stage (default {lr:g})")
    t.add_argument("--batch-size", type=int, help="default 32")
    t.add_argument("--min-class-count", type=int,
                   help="labels with fewer training examples fold into one class 'other' (default 0: none)")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-4)")
    t.add_argument("--modality-dropout", type=float,
                   help="probability of hiding the title or the image of a training item (default 0.1)")
    t.add_argument("--silence-title", type=float,
                   help="per training item and attribute, the probability of removing the words that name that "
                        "attribute's labels from the title, so the model learns that a present title can be silent "
                        "(default 0.3; 0 turns it off; off for --inputs text|image)")
    t.add_argument("--aux-loss-weight", type=float,
                   help="weight of the unimodal auxiliary heads' losses (a head on the title tower alone and one "
                        "on the image tower alone; training only, never exported) (default 0.5; 0 turns them off)")
    t.add_argument("--modality-weights", choices=["paper", "evidence"],
                   help="paper: lambda mixes the sequence-wise attention outputs T', I' (which have already "
                        "attended to each other); evidence: the same lambda, still read from T', I', mixes each "
                        "tower's own features, so it is the share of the title's vs the image's own evidence "
                        "(default evidence)")
    t.add_argument("--no-augment-images", dest="augment_images", action="store_false", default=None,
                   help="no image augmentation (default: random crop/shift/flip; colours never change)")
    t.add_argument("--patience", type=int,
                   help="end a stage after this many epochs without a better validation loss (default 5; 0: never)")
    t.add_argument("--no-mwa", action="store_true", help="ablation: plain average instead of modality-wise attention")
    t.add_argument("--no-swa", action="store_true", help="ablation: towers' [CLS] outputs, no sequence-wise attention")
    t.add_argument("--fusion", choices=["mwa", "tirg"],
                   help="how title and image features meet before the heads: modality-wise attention (default) "
                        "or text-image residual gating (LiT-TIRG)")
    t.add_argument("--inputs", choices=["both", "text", "image"],
                   help="single-modality baselines: a text-only (image-only) model ignores every image (title), "
                        "also when served (default both)")
    t.add_argument("--lock-image", action="store_true",
                   help="locked-image tuning: the image tower (MoMo: the image input embedding) never trains")
    t.add_argument("--modality-specific-layernorm", action="store_true",
                   help="MoMo: shared attention/MLP weights, per-modality LayerNorms (MS-CLIP)")
    t.add_argument("--val-frac", type=float, help="validation fraction of the id-hash split (default 0.1)")
    t.add_argument("--test-frac", type=float, help="test fraction of the id-hash split (default 0.1)")
    t.add_argument("--seed", type=int)
    t.add_argument("--in-memory", action="store_true",
                   help="hold every decoded image in RAM (the demo-scale path); by default they go to a disk "
                        "store that batches read from, so memory does not grow with the catalog")
    t.add_argument("--image-cache", metavar="DIR",
                   help="keep the decoded images in DIR, keyed by the catalog and the preprocessing: a later run "
                        "on the same catalog skips decoding")
    t.add_argument("--workers", type=int,
                   help="DataLoader and image-decoding worker processes (default: cores - 1; 0: in this process)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="where to train (default auto: CUDA when torch sees a GPU, else the CPU)")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision (default fp32); fp16 uses a GradScaler and needs CUDA; the "
                        "checkpoint's weights are fp32 either way")
    t.add_argument("--threads", type=int,
                   help="torch CPU threads (default: every core this process may use). On a machine shared with "
                        "another training, give each run its share, e.g. --threads 1 each on 2 cores")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)


def _pretrain_parser(sub) -> None:
    r = sub.add_parser("pretrain", help="MoMo's three-stage self-supervised pre-training (no labels needed)")
    r.add_argument("--family", default="momo", choices=["momo"])
    r.add_argument("--catalog", required=True, help="CSV, JSONL or Parquet with id, title, image (labels unused)")
    r.add_argument("--out", required=True, help="folder for the pre-trained encoder")
    r.add_argument("--config", help="momo-tiny (default), momo-base or a JSON file")
    r.add_argument("--split", choices=["train", "val", "test"],
                   help="use only this id-hash split (e.g. train, to keep evaluation products unseen)")
    for st, what in ((1, "MIM"), (2, "MIM + MLM"), (3, "MLM + cross-modal masking + contrastive + matching")):
        r.add_argument(f"--stage{st}-steps", type=int, help=f"steps of stage {st}: {what} (default 100; 0 skips)")
    r.add_argument("--batch-size", type=int, help="default 32")
    r.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    r.add_argument("--mim-ratio", type=float, help="masked share of patches (default 0.75)")
    r.add_argument("--mlm-ratio", type=float, help="masked share of title tokens (default 0.15)")
    r.add_argument("--cmm-ratio", type=float, help="masked share of both in cross-modal masking (default 0.75)")
    r.add_argument("--modality-specific-layernorm", action="store_true", help="per-modality LayerNorms (MS-CLIP)")
    r.add_argument("--seed", type=int)
    r.add_argument("--threads", type=int)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_pretrain)


def _eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="accuracy, macro-F1, recall@precision; calibrate per-class thresholds")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--catalog", required=True)
    e.add_argument("--out", help="where metrics.json and plots go (default: the checkpoint folder)")
    e.add_argument("--precision", type=lambda s: [float(x) for x in _csv_list(s)], default=[0.90, 0.95],
                   help="target precisions (default 0.90,0.95)")
    e.add_argument("--min-positives", type=int, default=5,
                   help="recall@precision is macro-averaged over the classes with at least this many positives "
                        "both in the validation split (the thresholds' support) and in the evaluated rows; the "
                        "same rule for --split test and --split all, so the two figures count alike (default 5)")
    e.add_argument("--min-support", type=int, default=10,
                   help="when calibrating: a class needs this many validation positives to get a threshold (default 10)")
    e.add_argument("--calibration-confidence", type=float, default=0.5,
                   help="when calibrating: a threshold's validation precision must reach the target at this "
                        "one-sided Clopper-Pearson confidence; 0 uses the point estimate (default 0.5)")
    e.add_argument("--split", choices=["test", "all"], default="test",
                   help="test: the checkpoint's own test split, thresholds calibrated on its validation split "
                        "(default); all: every row of any catalog with the same attribute columns, at the "
                        "checkpoint's calibrated thresholds")
    e.add_argument("--drop-title", action="store_true", help="condition: evaluate with the titles removed")
    e.add_argument("--drop-image", action="store_true", help="condition: evaluate with the images removed")
    e.add_argument("--strip-label-words", type=_csv_list, metavar="ATTR[,ATTR]",
                   help="condition: remove every class name of these attributes from the titles (e.g. colour)")
    e.add_argument("--report", help="also write figures and a Markdown summary (summary.md) into this folder")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)


def _export_parser(sub) -> None:
    x = sub.add_parser("export", help="checkpoint -> model bundle (ONNX + manifest + tokenizer), with parity check")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--out", required=True)
    x.add_argument("--name", help="model name (default: the checkpoint folder's name)")
    x.add_argument("--version", default="0.1.0")
    x.add_argument("--precision", type=_csv_list, default=["fp32"],
                   help="variants to write: fp32 (always), fp16 (GPUs), int8 (CPUs); each is checked against "
                        "fp32 on the catalog's test split and refused, with the reason, if it misses its gate "
                        "(exit status 2). Default fp32")
    x.add_argument("--attention", choices=["fused", "unfused"], default="fused",
                   help="fused: one ONNX Attention node per attention (opset 23, default); unfused: MatMul/Softmax "
                        "(opset 17)")
    x.add_argument("--opset", type=int, help="ONNX opset (default: 23 fused, 17 unfused)")
    x.add_argument("--catalog", help="catalog whose test split checks the fp16/int8 variants (default: the "
                                     "checkpoint's training catalog)")
    x.add_argument("--tolerance", type=float, default=1e-4, help="max |onnxruntime - torch| probability difference")
    x.add_argument("--tensorrt", action="store_true", help="also build a TensorRT engine (as `attrx build-engine`; "
                                                           "needs the full tensorrt package and a GPU)")
    x.add_argument("--max-batch-size", type=int, default=32, help="TensorRT profile's largest batch (default 32)")
    x.set_defaults(func=cmd_export)
    b = sub.add_parser("build-engine", help="bundle -> TensorRT engine (model.plan) for the lean runtime; needs "
                                            "the full tensorrt package and an NVIDIA GPU")
    b.add_argument("bundle")
    b.add_argument("--precision", choices=["auto", "fp16", "fp32"], default="auto",
                   help="which ONNX variant to build from (auto: fp16 if the bundle has it)")
    b.add_argument("--max-batch-size", type=int, default=32, help="largest batch of the optimisation profile")
    b.add_argument("--opt-batch-size", type=int, help="batch size TensorRT tunes for (default: max-batch-size)")
    b.add_argument("--workspace-gib", type=float, default=2.0, help="builder workspace limit")
    b.set_defaults(func=cmd_build_engine)


def _serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="serve a bundle over HTTP (FastAPI, dynamic batching, Prometheus metrics)")
    _add_settings_flags(s)
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--access-log", action="store_true", help="log every request")
    s.set_defaults(func=cmd_serve)


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
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    r = c.add_argument_group("Ray Data (pip install 'attrx[ray]'; OUT is then a folder)")
    r.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="score on Ray Data: a cluster's ADDRESS (or RAY_ADDRESS), else a local Ray")
    r.add_argument("--ray-concurrency", type=int, default=1, metavar="N", help="inference actors (default 1)")
    r.add_argument("--ray-num-cpus", type=float, default=1, metavar="CPUS",
                   help="CPUs per inference actor, also its onnxruntime threads (default 1)")
    r.add_argument("--ray-format", choices=["parquet", "jsonl"], default="parquet", help="OUT's files (default parquet)")
    r.add_argument("--ray-local-cpus", type=int, metavar="N", help="CPUs of the local Ray (default: all)")
    r.add_argument("--ray-block-rows", type=int, default=256, metavar="N",
                   help="catalog rows per Ray block, also per output file at most (default 256)")
    c.set_defaults(func=cmd_score)


def _validate_bundle_parser(sub) -> None:
    v = sub.add_parser("validate-bundle", help="check a model bundle against the schema and its file hashes")
    v.add_argument("bundle")
    v.set_defaults(func=cmd_validate_bundle)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        from pydantic import ValidationError

        if isinstance(e, ValidationError):
            raise SystemExit(f"attrx {args.command}: invalid arguments:\n{e}") from None
        raise SystemExit(f"attrx {args.command}: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
