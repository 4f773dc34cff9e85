from __future__ import annotations

from typing import Protocol

import numpy as np

from service.bundle import Bundle


class BackendError(RuntimeError):
    pass


class Backend(Protocol):
    name: str
    providers: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Batch of model inputs -> the bundle's outputs, in `output_names` order."""
        ...


def load_backend(bundle: Bundle, kind: str = "onnxruntime", *, providers: str = "cpu", threads: int = 0) -> Backend:
    if kind == "onnxruntime":
        from service.runtime.onnx import OnnxBackend

        return OnnxBackend(bundle, providers=providers, threads=threads)
    raise BackendError(f"unknown backend {kind!r}; available: onnxruntime")
