"""Image-side parts shared by the model families that have an image tower (CMA-CLIP, SIMLA): the
tower's shape in a config, a convolutional stem in place of the ViT's patch embedding, and a colour
histogram feature."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn


class TowerConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int


class VisionTowerConfig(TowerConfig):
    image_size: int
    patch_size: int


class ImageTowerFields(BaseModel):
    """The image tower's part of a family's config (CMA-CLIP, SIMLA): which tower, its ViT shape, its
    stem, and a colour histogram feature."""

    # "vit" (its shape from `vision`, or CMA-CLIP's --init-from) or a pretrained CNN, "efficientnet-lite0"
    # / "-lite1" / "-lite2" (ImageNet weights from the `vision` extra unless image_pretrained is false);
    # its input size is preprocess.image_size
    vision: VisionTowerConfig | None = None
    image_tower: str = Field("vit", pattern="^(vit|efficientnet-lite[012])$")
    image_pretrained: bool = True
    # "patch": CLIP's one-conv patch embedding; "cnn": a small convolutional stem with the same
    # output grid (total stride = patch_size), far better at low-resolution images trained from scratch
    image_stem: str = Field("patch", pattern="^(patch|cnn)$")
    stem_channels: list[int] = [32, 64, 128]
    # bins per RGB channel of a colour histogram computed from the pixels and added to the image
    # [CLS] feature (0: none). Colour is an attribute: a global colour summary is cheap to compute
    # and slow for a small network trained from scratch to learn
    colour_histogram: int = Field(0, ge=0, le=16)
    preprocess: dict = {}

    @model_validator(mode="after")
    def _tower_shape(self):
        if self.image_tower == "vit" and self.vision is None:
            raise ValueError("image_tower vit needs the `vision` block (its hidden size, layers, patch size)")
        if self.image_tower != "vit" and self.image_stem != "patch":
            raise ValueError(f"image_stem {self.image_stem} is the ViT's; image_tower {self.image_tower} is a CNN")
        return self

    @property
    def image_size(self) -> int:
        return int(self.preprocess.get("image_size") or self.vision.image_size)


class CnnStem(nn.Module):
    """Conv-BN-GELU stages, each halving the resolution, then a 1x1 conv to the tower width:
    [B, 3, S, S] -> [B, hidden, S/patch, S/patch], a drop-in for CLIP's patch embedding."""

    def __init__(self, hidden: int, patch_size: int, channels: list[int]):
        super().__init__()
        n = max(1, patch_size.bit_length() - 1)
        if 2**n != patch_size:
            raise ValueError(f"image_stem cnn needs a power-of-two patch_size, got {patch_size}")
        chans = [3, *(channels[min(k, len(channels) - 1)] for k in range(n))]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU(),
                       nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]
        layers.append(nn.Conv2d(chans[-1], hidden, 1))
        self.body = nn.Sequential(*layers)

    @property
    def weight(self) -> torch.Tensor:  # CLIPVisionEmbeddings reads patch_embedding.weight.dtype
        return self.body[0].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ColourHistogram(nn.Module):
    """Normalised pixels -> a projected, square-rooted joint RGB histogram [B, width]."""

    def __init__(self, bins: int, width: int, mean, std):
        super().__init__()
        self.bins = bins
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.proj = nn.Sequential(nn.Linear(bins**3, width), nn.LayerNorm(width))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, k = pixel_values.shape[0], self.bins
        rgb = (pixel_values * self.std + self.mean).clamp(0.0, 1.0 - 1e-6)
        # the clamp is a no-op in fp32; it keeps every bin index in range when the graph runs at a
        # lower precision (fp16 rounds 1 - 1e-6 to 1.0)
        q = torch.floor(rgb * k).clamp(0, k - 1).to(torch.int64).flatten(2)  # [B, 3, P]
        idx = (q[:, 0] * k + q[:, 1]) * k + q[:, 2]
        ones = torch.ones_like(idx, dtype=pixel_values.dtype)
        hist = torch.zeros(b, k**3, dtype=pixel_values.dtype, device=pixel_values.device).scatter_add(1, idx, ones)
        return self.proj(torch.sqrt(hist / idx.shape[1]))
