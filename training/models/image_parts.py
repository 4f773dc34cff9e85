"""Image-side parts shared by the model families that have an image tower (CMA-CLIP, SIMLA): the
tower's shape in a config, a convolutional stem in place of the ViT's patch embedding, and a colour
histogram feature."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict
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
