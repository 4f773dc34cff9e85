"""TensorRT: the engine builder and the lean-runtime backend.

What runs here (no GPU): the builder's and the backend's clear errors, with the real lean runtime
wheels installed (the Makefile's `tensorrt` extra). Building and running an engine needs the full
tensorrt package and an NVIDIA GPU; those tests skip, saying so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from attrx.service.contract.bundle import load_bundle, sha256_file
from attrx.service.inference.runtime import BackendError, load_backend


def _has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _gpu() -> bool:
    if not _has("cuda.bindings"):
        return False
    from cuda.bindings import runtime as cudart

    err, n = cudart.cudaGetDeviceCount()
    return err == cudart.cudaError_t.cudaSuccess and n > 0


def _with_plan(bundle, tmp_path, plan: bytes, built_with: str | None = None):
    """A copy of the bundle with `plan` recorded as its TensorRT engine, built with TensorRT
    `built_with` (default: the installed lean runtime's version)."""
    if built_with is None:
        import tensorrt_lean

        built_with = tensorrt_lean.__version__
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    (b / "model.plan").write_bytes(plan)
    raw = json.loads((b / "manifest.json").read_text())
    raw["files"]["model.plan"] = {"sha256": sha256_file(b / "model.plan"), "bytes": len(plan)}
    raw["variants"]["tensorrt"] = {"file": "model.plan", "format": "tensorrt", "precision": "fp32",
                                   "providers": ["tensorrt"], "build": {"tensorrt": built_with}}
    (b / "manifest.json").write_text(json.dumps(raw))
    return b


def _with_variant(bundle, tmp_path, precision: str):
    """A copy of the bundle listing its fp32 file once more as a `precision` variant (options only)."""
    b = tmp_path / f"with-{precision}"
    shutil.copytree(bundle, b)
    raw = json.loads((b / "manifest.json").read_text())
    raw["variants"][precision] = {**raw["variants"]["fp32"], "precision": precision}
    (b / "manifest.json").write_text(json.dumps(raw))
    return b


@pytest.mark.skipif(not _has("tensorrt_lean"), reason="the TensorRT lean runtime is not installed "
                                                      "(pip install 'attrx[tensorrt]')")
@pytest.mark.parametrize("built_with", ["10.13.3.9", None])
def test_backend_refuses_a_plan_of_another_tensorrt_before_loading_it(bundle, tmp_path, built_with):
    """Checked before deserialising and before looking for a GPU, so it shows here: the error names
    both versions (or says the manifest does not record one)."""
    import tensorrt_lean

    b = _with_plan(bundle, tmp_path, b"not a plan", built_with=built_with or "x")
    if built_with is None:  # a manifest without the builder's version
        raw = json.loads((b / "manifest.json").read_text())
        del raw["variants"]["tensorrt"]["build"]
        (b / "manifest.json").write_text(json.dumps(raw))
        want = "does not say which TensorRT built this engine"
    else:
        want = (f"was built with TensorRT {re.escape(built_with)}, and this lean runtime is "
                f"{re.escape(tensorrt_lean.__version__)}")
    with pytest.raises(BackendError, match=want):
        load_backend(load_bundle(b), "tensorrt")


def test_backend_without_engine_says_how_to_build_one(bundle):
    with pytest.raises(BackendError, match="has no TensorRT engine: build one .*attrx build-engine"):
        load_backend(load_bundle(bundle), "tensorrt")


@pytest.mark.skipif(not (_has("tensorrt_lean") and _has("cuda.bindings")),
                    reason="the TensorRT lean runtime is not installed (pip install 'attrx[tensorrt]'; "
                           "the Makefile installs it)")
def test_lean_runtime_without_gpu_refuses_clearly(bundle, tmp_path):
    if _gpu():
        pytest.skip("a GPU is present: the no-GPU error path cannot be checked here")
    b = _with_plan(bundle, tmp_path, b"not an engine")
    # in a child process: the lean runtime's native code must not take the test session with it
    code = ("import sys\nfrom attrx.service.contract.bundle import load_bundle\nfrom attrx.service.inference.runtime import load_backend\n"
            f"load_backend(load_bundle({str(b)!r}), 'tensorrt')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("attrx.service.inference.runtime.base.BackendError: the TensorRT backend needs an NVIDIA GPU"), r.stderr
    # here: error 35, cudaErrorInsufficientDriver (no driver); a machine with a driver and no GPU says 100
    assert re.search(r"CUDA error \d+ \(cuda\w+\): \w", last) and "--backend onnxruntime" in last, last
    import tensorrt_lean  # the wheel really is there and imports

    assert int(tensorrt_lean.__version__.split(".")[0]) >= 10


def test_serve_with_tensorrt_backend_fails_at_start_with_the_reason(bundle):
    r = subprocess.run([sys.executable, "-m", "attrx", "serve", "--bundle", str(bundle), "--port", "0",
                        "--backend", "tensorrt", "--workers", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "has no TensorRT engine" in r.stdout + r.stderr


@pytest.mark.skipif(_has("tensorrt"), reason="the full tensorrt package is installed here")
def test_build_engine_without_builder_names_what_to_install(bundle):
    from attrx.cli import main

    with pytest.raises(SystemExit, match="needs the full TensorRT package.*pypi.nvidia.com tensorrt-cu13==11"):
        main(["build-engine", str(bundle)])


def test_tensorrt_provider_options(bundle, tmp_path):
    from attrx.service.inference.runtime.onnxruntime_backend import tensorrt_options

    b = load_bundle(bundle)
    opts = tensorrt_options(b, "fp32", 16, str(tmp_path / "cache"))
    pre = b.manifest.preprocess
    L, S = pre.max_text_len, pre.image_size
    assert opts["trt_profile_min_shapes"] == (f"input_ids:1x{L},attention_mask:1x{L},pixel_values:1x3x{S}x{S},"
                                              "text_present:1,image_present:1")
    assert opts["trt_profile_max_shapes"].startswith(f"input_ids:16x{L},")
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_fp16_enable"] == "False"
    # the fp16 graph carries its own types (LayerNorm, Softmax, the colour histogram kept fp32): the
    # provider must not be told to build a weakly typed fp16 network from it either
    fp16 = _with_variant(bundle, tmp_path, "fp16")
    assert tensorrt_options(load_bundle(fp16), "fp16", 16, str(tmp_path / "c2"))["trt_fp16_enable"] == "False"
    cache = tmp_path / "cache" / b.manifest.files["model.onnx"].sha256[:16]
    assert opts["trt_engine_cache_path"] == str(cache) and cache.is_dir()


@pytest.mark.skipif(not (_has("tensorrt") and _gpu()),
                    reason="building and running an engine needs the full tensorrt package and an NVIDIA GPU "
                           "(NVIDIA's container, or pip install --extra-index-url https://pypi.nvidia.com "
                           "tensorrt-cu13==11.4.0.106)")
def test_engine_build_and_run_matches_onnxruntime(bundle, tmp_path):  # pragma: no cover - GPU machines only
    from attrx.export.tensorrt_engine import build_engine
    from attrx.service.inference.predictor import Predictor

    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    build_engine(b, max_batch_size=8)
    bb = load_bundle(b)
    assert bb.manifest.variants["tensorrt"].build["profile_batch"] == [1, 8, 8]
    pred = Predictor(bb)
    items = [pred.decode_request(f"Roadster Men Blue Striped Tee {i}", None).inputs for i in range(20)]  # 20 > 8: chunked
    feeds = {k: np.concatenate([x[k] for x in items]) for k in items[0]}
    ref = load_backend(bb, precision="fp32").run(feeds)
    got = load_backend(bb, "tensorrt").run(feeds)
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_allclose(r, g, atol=1e-2)
