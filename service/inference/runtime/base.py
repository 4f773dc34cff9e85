from __future__ import annotations

from typing import Protocol

import numpy as np

from attrx.service.contract.bundle import Bundle

BACKENDS = ("onnxruntime", "tensorrt")


class BackendError(RuntimeError):
    pass


class Backend(Protocol):
    name: str
    providers: list[str]
    output_names: list[str]
    precision: str  # the precision that runs: fp32, fp16 or int8
    variant: str  # its key in the manifest's variants

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Batch of model inputs -> the bundle's outputs, in `output_names` order."""
        ...


def load_backend(bundle: Bundle, kind: str = "onnxruntime", *, providers: str = "cpu", threads: int = 0,
                 precision: str = "auto", max_batch_size: int = 32, trt_cache_dir: str | None = None) -> Backend:
    """`onnxruntime` runs one of the bundle's ONNX variants (`precision`: auto picks the best one for
    the providers); `tensorrt` runs its TensorRT engine with the lean runtime."""
    if kind == "onnxruntime":
        from attrx.service.inference.runtime.onnxruntime_backend import OnnxBackend

        return OnnxBackend(bundle, providers=providers, threads=threads, precision=precision,
                           max_batch_size=max_batch_size, trt_cache_dir=trt_cache_dir)
    if kind == "tensorrt":
        from attrx.service.inference.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(bundle)
    raise BackendError(f"unknown backend {kind!r}; available: {', '.join(BACKENDS)}")
