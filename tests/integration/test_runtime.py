"""Runtime backends: provider selection, and the GPU paths where a GPU build of onnxruntime exists."""

import numpy as np
import pytest

from attrx.service.contract.bundle import load_bundle
from attrx.service.inference.predictor import Predictor
from attrx.service.inference.runtime import BackendError, load_backend
from attrx.service.inference.runtime.onnxruntime_backend import choose_providers

CPU_ONLY = ["CPUExecutionProvider"]
GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_provider_choice():
    assert choose_providers("cpu", GPU) == ["CPUExecutionProvider"]
    assert choose_providers("auto", CPU_ONLY) == ["CPUExecutionProvider"]
    assert choose_providers("auto", GPU) == GPU
    assert choose_providers("auto", GPU[1:]) == GPU[1:]
    assert choose_providers("cuda", GPU) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(BackendError, match="TensorrtExecutionProvider was requested.*attrx\\[gpu\\]"):
        choose_providers("tensorrt", CPU_ONLY)
    with pytest.raises(BackendError, match="unknown execution provider 'tpu'"):
        choose_providers("tpu", GPU)


def test_unknown_backend_is_named(bundle):
    with pytest.raises(BackendError, match="unknown backend 'tensorrt-native'"):
        load_backend(load_bundle(bundle), "tensorrt-native")


def _gpu_provider_or_skip(name: str) -> None:
    import onnxruntime as ort

    if name not in ort.get_available_providers():
        pytest.skip(f"{name} not available: this onnxruntime offers {ort.get_available_providers()} "
                    "(install attrx[gpu] in place of onnxruntime on a machine with an NVIDIA GPU)")


@pytest.mark.parametrize("provider, name", [("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")])
def test_gpu_provider_matches_cpu(bundle, provider, name):
    _gpu_provider_or_skip(name)
    b = load_bundle(bundle)
    pred = Predictor(b)
    feeds = pred.decode_request("Roadster Men Blue Striped Tee", None).inputs
    cpu = load_backend(b, providers="cpu").run(feeds)
    gpu = load_backend(b, providers=provider)
    assert gpu.providers[0] == name
    for a, g in zip(cpu, gpu.run(feeds), strict=True):
        np.testing.assert_allclose(a, g, atol=1e-3)
