"""What every runtime backend is: the `Backend` protocol and the error it raises."""

from __future__ import annotations

from typing import Protocol

import numpy as np


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
