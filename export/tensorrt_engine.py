"""`attrx build-engine`: a bundle's ONNX graph -> a TensorRT engine (`model.plan`) in the bundle.

Runs where the full `tensorrt` package (the builder) and an NVIDIA GPU are: NVIDIA's container
(nvcr.io/nvidia/tensorrt) or `pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13==<pin>`
(the pin: `TENSORRT_VERSION` in service/contract/bundle.py, the version of the `tensorrt` extra's
lean runtime; another builder is refused unless `allow_other_version`).
The engine is built
- from the fp16 ONNX variant when the bundle has one (TensorRT >= 10 networks are strongly typed:
  the graph's own types decide the precision, there is no FP16 builder flag), else from fp32;
- with one optimisation profile over the batch axis: min 1, opt, max `max_batch_size`;
- version-compatible and without an embedded lean runtime, so the serving side's
  `tensorrt-lean-cu12` (service/inference/runtime/tensorrt_backend.py) runs it;
- with a timing cache saved beside the bundle (`trt-timing.cache`) and reused by later builds; a
  cache from another TensorRT or GPU is refused by TensorRT, logged, and replaced by a fresh one.
The manifest gains a `tensorrt` variant with the file's hash and how it was built.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from attrx.service.contract.bundle import (
    MANIFEST,
    TENSORRT_VERSION,
    load_bundle,
    sha256_file,
    tensorrt_release,
)

log = logging.getLogger("attrx.export")

PLAN = "model.plan"
TIMING_CACHE = "trt-timing.cache"


class EngineBuildError(RuntimeError):
    pass


def _import_builder():
    try:
        import tensorrt as trt
    except ImportError:
        raise EngineBuildError(
            "building an engine needs the full TensorRT package (the builder), which PyPI does not carry: run in "
            "NVIDIA's container (nvcr.io/nvidia/tensorrt) or `pip install --extra-index-url "
            f"https://pypi.nvidia.com tensorrt-cu13=={TENSORRT_VERSION}`, on a machine with an NVIDIA GPU") from None
    return trt


def check_builder_version(version: str, allow_other: bool = False) -> None:
    """The plan runs only on a lean runtime of the builder's version: the one attrx pins."""
    if tensorrt_release(version) == tensorrt_release(TENSORRT_VERSION):
        return
    text = (f"this TensorRT builder is {version}, and attrx's lean runtime is pinned to {TENSORRT_VERSION}: the "
            f"engine would run only where tensorrt-lean-cu13=={version} is installed")
    if not allow_other:
        raise EngineBuildError(f"{text}. Install tensorrt-cu13=={TENSORRT_VERSION}, or pass --allow-other-tensorrt "
                               "and serve with that lean runtime")
    log.warning("%s (--allow-other-tensorrt)", text)


def attach_timing_cache(config, cache_bytes: bytes) -> bool:
    """Attach the saved timing cache; one from another TensorRT version or GPU is refused by
    TensorRT (set_timing_cache returns False), logged, and replaced by a fresh cache. Returns
    whether the saved cache was used."""
    if cache_bytes:
        cache = config.create_timing_cache(cache_bytes)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return True
        log.warning("the saved timing cache (%d bytes) does not match this TensorRT and GPU; building with a fresh "
                    "one, which replaces it", len(cache_bytes))
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        raise EngineBuildError("TensorRT refused even an empty timing cache")
    return False


def _network(trt, builder, logger, onnx_path: Path):
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser refused {onnx_path.name}: {errors}")
    return network, parser


def _config(trt, builder, network, *, max_batch: int, opt_batch: int, workspace_gib: float, cache_bytes: bytes):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        rest = tuple(t.shape)[1:]
        profile.set_shape(t.name, (1, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    attach_timing_cache(config, cache_bytes)
    return config


def build_engine(bundle_path: str | Path, *, max_batch_size: int = 32, opt_batch_size: int | None = None,
                 precision: str = "auto", workspace_gib: float = 2.0, allow_other_version: bool = False) -> Path:
    """Build and add `model.plan` to the bundle; returns its path."""
    trt = _import_builder()
    check_builder_version(trt.__version__, allow_other_version)
    bundle = load_bundle(bundle_path)
    variants = bundle.manifest.variants
    source = ("fp16" if "fp16" in variants else "fp32") if precision == "auto" else precision
    if source not in variants:
        raise EngineBuildError(f"the bundle has no {source} ONNX variant (has {', '.join(variants)})")
    t0 = time.time()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _network(trt, builder, logger, bundle.variant_path(source))
    cache_file = bundle.path / TIMING_CACHE
    opt = opt_batch_size or max_batch_size
    config = _config(trt, builder, network, max_batch=max_batch_size, opt_batch=opt, workspace_gib=workspace_gib,
                     cache_bytes=cache_file.read_bytes() if cache_file.is_file() else b"")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError("TensorRT could not build the engine (see its log above)")
    (bundle.path / PLAN).write_bytes(bytes(plan))
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    _record(bundle.path, source, {"tensorrt": trt.__version__, "profile_batch": [1, opt, max_batch_size],
                                  "version_compatible": True, "lean_runtime_embedded": False,
                                  "built_from": variants[source].file, "seconds": round(time.time() - t0, 1)})
    print(f"engine written to {bundle.path / PLAN} ({(bundle.path / PLAN).stat().st_size / 1e6:.1f} MB, "
          f"{source}, batch 1..{max_batch_size}, {time.time() - t0:.0f}s)")
    return bundle.path / PLAN


def _record(path: Path, precision: str, build: dict) -> None:
    """Add the engine to the manifest (and its hash to `files`), then re-validate the bundle."""
    mf = path / MANIFEST
    raw = json.loads(mf.read_text())
    if raw.get("schema_version") == 1:  # a v1 bundle becomes v2: its model.onnx is the fp32 variant
        raw["schema_version"] = 2
        raw["variants"] = {"fp32": {"file": "model.onnx", "format": "onnx", "precision": "fp32",
                                    "providers": ["cpu", "cuda", "tensorrt"], "parity": raw.get("parity", {})}}
    raw["files"][PLAN] = {"sha256": sha256_file(path / PLAN), "bytes": (path / PLAN).stat().st_size}
    raw["variants"]["tensorrt"] = {"file": PLAN, "format": "tensorrt", "precision": precision,
                                   "providers": ["tensorrt"], "build": build}
    mf.write_text(json.dumps(raw, indent=2))
    load_bundle(path)
