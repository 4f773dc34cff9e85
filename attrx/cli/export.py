"""`attrx export`, `attrx build-engine`, `attrx validate-bundle`: checkpoint -> model bundle."""

from __future__ import annotations

import sys

from attrx.cli.common import bundle_option, csv_list, deprecated, mlflow_flags, need_training_extra


def cmd_export(a) -> None:
    need_training_extra()
    from attrx.export.build import export_bundle
    from attrx.export.onnx_export import ExportError

    try:
        result = export_bundle(a.checkpoint, a.out, name=a.name, version=a.version, precisions=a.variants,
                               attention=a.attention, opset=a.opset, tolerance=a.tolerance, catalog=a.catalog,
                               unimodal=a.unimodal, progress=not a.quiet)
    except ExportError as e:
        raise SystemExit(f"attrx export: {e}") from None
    if a.tensorrt:
        from attrx.export.tensorrt_engine import build_engine

        build_engine(result.path, max_batch_size=a.max_batch_size)
    if a.register:
        _register(a, result.path)
    if result.refused:
        refused = "; ".join(f"{k}: {v}" for k, v in result.refused.items())
        print(f"attrx export: written without {', '.join(result.refused)} ({refused})", file=sys.stderr)
        raise SystemExit(3)  # done, but part of the result refused


def _register(a, bundle) -> None:
    from attrx.export.mlflow_registry import register_bundle
    from attrx.training.tracking import TrackingUnavailable, tracking_uri

    uri = tracking_uri(a.mlflow_uri)
    if uri is None:
        raise SystemExit("attrx export: --register needs an MLflow tracking server: --mlflow-uri or MLFLOW_TRACKING_URI")
    try:
        print(f"attrx export: registered as {register_bundle(bundle, a.register, uri, experiment=a.mlflow_experiment, checkpoint=a.checkpoint)}"
              f" (attrx serve --bundle models:/{a.register}/VERSION serves it)", flush=True)
    except TrackingUnavailable as e:
        raise SystemExit(f"attrx export: {e}") from None


def cmd_build_engine(a) -> None:
    from attrx.export.tensorrt_engine import EngineBuildError, build_engine

    try:
        build_engine(a.bundle, max_batch_size=a.max_batch_size, opt_batch_size=a.opt_batch_size,
                     precision=a.variant, workspace_gib=a.workspace_gib,
                     allow_other_version=a.allow_other_tensorrt)
    except EngineBuildError as e:
        raise SystemExit(f"attrx build-engine: {e}") from None


def cmd_validate_bundle(a) -> None:
    from attrx.service.contract.bundle import BundleError, load_bundle

    try:
        b = load_bundle(a.bundle)
    except BundleError as e:
        raise SystemExit(f"attrx: invalid bundle: {e}") from None
    m = b.manifest
    drift = _check_drift_reference(m)
    refused = f"; refused: {', '.join(m.refused)}" if m.refused else ""
    print(f"bundle {a.bundle} is valid: {m.name} {m.version} ({m.model.family}, schema v{m.schema_version}, "
          f"{m.model.attention} attention), attributes {', '.join(x.name for x in m.attributes)}; "
          f"variants {', '.join(m.variants)}{refused}; drift reference: {drift}")


def _check_drift_reference(m) -> str:
    from attrx.service.contract.drift_stats import ReferenceError, Statistics

    if m.drift_reference is None:
        return "none (serve with --drift-reference, or re-baseline from traffic)"
    try:
        Statistics(m).check_reference(m.drift_reference)
    except ReferenceError as e:
        raise SystemExit(f"attrx: invalid bundle: drift_reference: {e}") from None
    return f"{m.drift_reference['items']} products ({m.drift_reference.get('source', '?')})"


def _export_parser(sub) -> None:
    x = sub.add_parser("export", help="checkpoint -> model bundle (ONNX + manifest + tokenizer), with parity check",
                       description="Exit status: 0 written, 3 written without a variant that missed its gate, "
                                   "1 failed, 2 usage error.")
    x.add_argument("--checkpoint", required=True, help="checkpoint folder (from attrx train)")
    x.add_argument("--out", required=True, help="bundle folder to write (replaced if it exists)")
    x.add_argument("--name", help="model name (default: the checkpoint folder's name)")
    x.add_argument("--version", default="0.1.0", help="model version recorded in the manifest (default 0.1.0)")
    x.add_argument("--variants", type=csv_list, default=["fp32"],
                   help="variants to write: fp32 (always), fp16 (GPUs), int8 (CPUs); each is checked against "
                        "fp32 on the catalog's test split and refused, with the reason, if it misses its gate "
                        "(exit status 3). Default fp32")
    x.add_argument("--attention", choices=["fused", "unfused"], default="fused",
                   help="fused: one ONNX Attention node per attention (opset 23, default); unfused: MatMul/Softmax "
                        "(opset 17)")
    x.add_argument("--opset", type=int, help="ONNX opset (default: 23 fused, 17 unfused)")
    x.add_argument("--catalog", help="catalog whose test split checks the fp16/int8 variants (default: the "
                                     "checkpoint's training catalog)")
    x.add_argument("--tolerance", type=float, default=1e-4, help="max |onnxruntime - torch| probability difference")
    x.add_argument("--no-unimodal", dest="unimodal", action="store_false",
                   help="leave out the title-only and image-only outputs (the bundle then flags no title-image "
                        "conflicts; for comparing serving cost)")
    x.add_argument("--tensorrt", action="store_true", help="also build a TensorRT engine (as `attrx build-engine`; "
                                                           "needs the full tensorrt package and a GPU)")
    x.add_argument("--max-batch-size", type=int, default=32, help="TensorRT profile's largest batch (default 32)")
    x.add_argument("--quiet", action="store_true", help="no progress bars")
    deprecated(x, "--precision", "--variants", "variants", type=csv_list)
    x.add_argument("--register", metavar="NAME", help="also register the bundle as a new version of NAME in the MLflow "
                                                     "model registry, its thresholds and gates as tags")
    mlflow_flags(x, "the export run and the registered version")
    x.set_defaults(func=cmd_export)
    b = sub.add_parser("build-engine", help="bundle -> TensorRT engine (model.plan) for the lean runtime; needs "
                                            "the full tensorrt package and an NVIDIA GPU")
    bundle_option(b)
    b.add_argument("--variant", choices=["auto", "fp16", "fp32"], default="auto",
                   help="which ONNX variant to build from (auto: fp16 if the bundle has it)")
    b.add_argument("--max-batch-size", type=int, default=32, help="largest batch of the optimisation profile")
    b.add_argument("--opt-batch-size", type=int, help="batch size TensorRT tunes for (default: max-batch-size)")
    b.add_argument("--workspace-gib", type=float, default=2.0, help="builder workspace limit")
    b.add_argument("--allow-other-tensorrt", action="store_true",
                   help="build with a TensorRT other than the pinned one (the engine then runs only on a lean "
                        "runtime of that version)")
    deprecated(b, "--precision", "--variant", "variant", choices=["auto", "fp16", "fp32"])
    b.set_defaults(func=cmd_build_engine)


def _validate_bundle_parser(sub) -> None:
    v = sub.add_parser("validate-bundle", help="check a model bundle against the schema and its file hashes")
    bundle_option(v)
    v.set_defaults(func=cmd_validate_bundle)


def add_parsers(sub) -> None:
    _export_parser(sub)
    _validate_bundle_parser(sub)
