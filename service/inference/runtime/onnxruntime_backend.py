"""onnxruntime backend. CPU here; CUDA / TensorRT execution providers when installed and asked for
(`attrx[gpu]` installs onnxruntime-gpu, which must replace, not sit beside, onnxruntime).

It runs one of the bundle's ONNX variants: `precision="auto"` takes the best one meant for the
chosen provider (int8 on CPU, fp16 on CUDA/TensorRT, else fp32)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from attrx.service.contract.bundle import Bundle, BundleError, choose_variant
from attrx.service.inference.runtime.base import BackendError

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
KIND_OF = {v[0]: k for k, v in PROVIDERS.items()}
log = logging.getLogger("attrx.runtime")


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """`auto` takes the best available; a named one must be available or it is an error."""
    if requested == "auto":
        for key in ("tensorrt", "cuda", "cpu"):
            if PROVIDERS[key][0] in available:
                return [p for p in PROVIDERS[key] if p in available]
    if requested not in PROVIDERS:
        raise BackendError(f"unknown execution provider {requested!r}; use one of auto, {', '.join(PROVIDERS)}")
    want = PROVIDERS[requested]
    if want[0] not in available:
        raise BackendError(
            f"{want[0]} was requested but this onnxruntime offers only {', '.join(available)} "
            "(install attrx[gpu] in place of onnxruntime, on a machine with a GPU)")
    return [p for p in want if p in available]


def input_shapes(bundle: Bundle, batch: int) -> str:
    """The inputs' shapes at `batch` as the TensorRT provider's profile options write them."""
    pre = bundle.manifest.preprocess
    dims = {"input_ids": [pre.max_text_len], "attention_mask": [pre.max_text_len],
            "pixel_values": [3, pre.image_size, pre.image_size], "text_present": [], "image_present": []}
    return ",".join(f"{n}:" + "x".join(str(d) for d in [batch, *rest]) for n, rest in dims.items())


def cache_root(explicit: str | None = None) -> Path:
    """Where the TensorRT provider keeps engines and timing caches: `explicit` (which must be
    writable), else ATTRX_CACHE_DIR, else $XDG_CACHE_HOME/attrx, else ~/.cache/attrx; a default that
    cannot be created or written (a container user without a home) falls back to the temp folder."""
    if explicit:
        path = Path(explicit)
        if not _writable(path):
            raise BackendError(f"--trt-cache-dir {path}: cannot create or write this folder")
        return path
    env = os.environ.get("ATTRX_CACHE_DIR")
    xdg = os.environ.get("XDG_CACHE_HOME")
    path = Path(env) if env else Path(xdg) / "attrx" if xdg else Path.home() / ".cache" / "attrx"
    path = path / "tensorrt"
    if _writable(path):
        return path
    fallback = Path(tempfile.gettempdir()) / f"attrx-{os.getuid() if hasattr(os, 'getuid') else 'user'}" / "tensorrt"
    if not _writable(fallback):
        raise BackendError(f"no writable folder for the TensorRT engine cache ({path}, {fallback}): set "
                           "ATTRX_CACHE_DIR or --trt-cache-dir")
    log.warning("the TensorRT engine cache cannot go to %s (not writable); using %s, which does not outlive "
                "the machine: set ATTRX_CACHE_DIR to keep engines between starts", path, fallback)
    return fallback


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def tensorrt_options(bundle: Bundle, variant: str, max_batch_size: int, cache_dir: str | None) -> dict:
    """TensorRT execution provider options: engines and timing cache kept on disk (per model file),
    one profile over the batch axis (1..max_batch_size).

    `trt_fp16_enable` stays off for every variant: the fp16 graph already carries its types (and
    keeps LayerNorm, Softmax and the colour histogram in fp32 on purpose, which the flag would let
    TensorRT undo), and the fp32 graph was parity-checked at fp32."""
    sha = bundle.manifest.files[bundle.manifest.variants[variant].file].sha256[:16]
    cache = cache_root(cache_dir) / sha
    cache.mkdir(parents=True, exist_ok=True)
    return {
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": "False",
        "trt_profile_min_shapes": input_shapes(bundle, 1),
        "trt_profile_opt_shapes": input_shapes(bundle, max_batch_size),
        "trt_profile_max_shapes": input_shapes(bundle, max_batch_size),
    }


def preload_gpu_libraries(ort, providers: list[str]) -> None:
    """onnxruntime-gpu (>= 1.21) loads CUDA and cuDNN from the nvidia-* wheels its `cuda` and
    `cudnn` extras install, which the loader would not find on its own path."""
    if providers[0] != "CPUExecutionProvider" and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as e:  # noqa: BLE001 - what did not load is reported by the provider check
            log.warning("onnxruntime.preload_dlls() failed: %s", e)


def provider_fallback(requested: list[str], running: list[str]) -> str | None:
    """None when the provider asked for first runs the model; else what happened, in words."""
    if running and running[0] == requested[0]:
        return None
    return (f"{requested[0]} was asked for, but onnxruntime runs the model on {', '.join(running) or 'nothing'}: "
            "the provider did not load (missing CUDA, cuDNN or TensorRT libraries, or no GPU; onnxruntime's "
            "log above says which)")


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, *, providers: str = "cpu", threads: int = 0, precision: str = "auto",
                 max_batch_size: int = 32, trt_cache_dir: str | None = None, allow_fallback: bool = False):
        import onnxruntime as ort

        requested = choose_providers(providers, ort.get_available_providers())
        preload_gpu_libraries(ort, requested)
        self._open(ort, bundle, requested, precision, threads, max_batch_size, trt_cache_dir)
        self.fallback = provider_fallback(requested, self.session.get_providers())
        if self.fallback:
            if not allow_fallback:
                raise BackendError(f"{self.fallback}. Fix the installation, or ask for --providers cpu, or let "
                                   "`attrx serve` run on what loads with --allow-provider-fallback")
            log.warning("%s; serving on it (--allow-provider-fallback)", self.fallback)
            running = self.session.get_providers()
            kind = KIND_OF.get(running[0], "cpu")
            self._open(ort, bundle, [p for p in PROVIDERS[kind] if p in running] or running, precision, threads,
                       max_batch_size, trt_cache_dir)
        self.providers = list(self.session.get_providers())  # what really runs, as /v1/model reports it
        self.output_names = list(bundle.manifest.model.outputs)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _open(self, ort, bundle: Bundle, providers: list[str], precision: str, threads: int, max_batch_size: int,
              trt_cache_dir: str | None) -> None:
        try:
            self.variant = choose_variant(bundle.manifest, precision, KIND_OF.get(providers[0], "cpu"))
        except BundleError as e:
            raise BackendError(str(e)) from None
        self.precision = bundle.manifest.variants[self.variant].precision
        path = bundle.variant_path(self.variant)
        options = [tensorrt_options(bundle, self.variant, max_batch_size, trt_cache_dir)
                   if p == "TensorrtExecutionProvider" else {} for p in providers]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers, provider_options=options)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendError(f"{path}: onnxruntime cannot load the model ({e})") from None

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, {k: inputs[k] for k in self.input_names})
