"""onnxruntime backend. CPU here; CUDA / TensorRT execution providers when installed and asked for
(`attrx[gpu]` installs onnxruntime-gpu, which must replace, not sit beside, onnxruntime)."""

from __future__ import annotations

import numpy as np

from service.bundle import Bundle
from service.runtime.base import BackendError

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


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


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, *, providers: str = "cpu", threads: int = 0):
        import onnxruntime as ort

        self.providers = choose_providers(providers, ort.get_available_providers())
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(bundle.model_path), so, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendError(f"{bundle.model_path}: onnxruntime cannot load the model ({e})") from e
        self.output_names = list(bundle.manifest.model.outputs)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, {k: inputs[k] for k in self.input_names})
