"""Runtime backends: run a bundle's model on preprocessed arrays.

A backend is anything with `name`, `providers`, `output_names` and `run(inputs) -> list[ndarray]`
(see `base.Backend`). onnxruntime is the one shipped; a native TensorRT engine or a torch backend
plugs in through `load_backend`.
"""

from attrx.service.inference.runtime.base import Backend, BackendError
from attrx.service.inference.runtime.factory import BACKENDS, load_backend

__all__ = ["BACKENDS", "Backend", "BackendError", "load_backend"]
