"""onnxruntime backend. CPU here; CUDA / TensorRT execution providers when installed and asked for
(`attrx[gpu]` installs onnxruntime-gpu, which must replace, not sit beside, onnxruntime).

It runs one of the bundle's ONNX variants: `precision="auto"` takes the best one meant for the
chosen provider (int8 on CPU, fp16 on CUDA/TensorRT, else fp32)."""

from __future__ import annotations

import os
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


def tensorrt_options(bundle: Bundle, variant: str, max_batch_size: int, cache_dir: str | None) -> dict:
    """TensorRT execution provider options: engines and timing cache kept on disk (per model file),
    one profile over the batch axis (1..max_batch_size), fp16 kernels for the fp16 variant."""
    sha = bundle.manifest.files[bundle.manifest.variants[variant].file].sha256[:16]
    cache = Path(cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attrx" / "tensorrt") / sha
    cache.mkdir(parents=True, exist_ok=True)
    return {
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": str(variant == "fp16"),
        "trt_profile_min_shapes": input_shapes(bundle, 1),
        "trt_profile_opt_shapes": input_shapes(bundle, max_batch_size),
        "trt_profile_max_shapes": input_shapes(bundle, max_batch_size),
    }


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, *, providers: str = "cpu", threads: int = 0, precision: str = "auto",
                 max_batch_size: int = 32, trt_cache_dir: str | None = None):
        import onnxruntime as ort

        self.providers = choose_providers(providers, ort.get_available_providers())
        try:
            self.variant = choose_variant(bundle.manifest, precision, KIND_OF[self.providers[0]])
        except BundleError as e:
            raise BackendError(str(e)) from None
        self.precision = bundle.manifest.variants[self.variant].precision
        path = bundle.variant_path(self.variant)
        options = [tensorrt_options(bundle, self.variant, max_batch_size, trt_cache_dir)
                   if p == "TensorrtExecutionProvider" else {} for p in self.providers]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), so, providers=self.providers, provider_options=options)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendError(f"{path}: onnxruntime cannot load the model ({e})") from None
        self.output_names = list(bundle.manifest.model.outputs)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, {k: inputs[k] for k in self.input_names})
