"""The one place that names the concrete backends: a backend kind -> an instance (LitServe's
transport factory is the pattern). Nothing else imports `onnxruntime_backend` or `tensorrt_backend`."""

from __future__ import annotations

from attrx.service.contract.bundle import Bundle
from attrx.service.inference.runtime.base import Backend, BackendError

BACKENDS = ("onnxruntime", "tensorrt")


def load_backend(bundle: Bundle, kind: str = "onnxruntime", *, providers: str = "cpu", threads: int = 0,
                 precision: str = "auto", max_batch_size: int = 32, trt_cache_dir: str | None = None,
                 allow_fallback: bool = False) -> Backend:
    """`onnxruntime` runs one of the bundle's ONNX variants (`precision`: auto picks the best one for
    the providers; a provider that does not load is an error unless `allow_fallback`); `tensorrt` runs
    its TensorRT engine with the lean runtime."""
    if kind == "onnxruntime":
        from attrx.service.inference.runtime.onnxruntime_backend import OnnxBackend

        return OnnxBackend(bundle, providers=providers, threads=threads, precision=precision,
                           max_batch_size=max_batch_size, trt_cache_dir=trt_cache_dir, allow_fallback=allow_fallback)
    if kind == "tensorrt":
        from attrx.service.inference.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(bundle)
    raise BackendError(f"unknown backend {kind!r}; available: {', '.join(BACKENDS)}")
