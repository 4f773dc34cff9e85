"""What a model family is to attrx: one `Family` entry per family, listed in
attrx.training.models.registry, and the helpers the families share to start from a pre-training folder.

A family module (cma_clip.py, momo.py, simla.py) holds its config class, its classifier and two
functions the entry names: `create` (a new model for a training run) and `from_checkpoint` (an
untrained model of a checkpoint's architecture, ready for its weights)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from torch import nn

from attrx.training.models.layers import ExportWrapper


@dataclass(frozen=True)
class Family:
    name: str  # as configs, checkpoints and --family spell it
    title: str  # as people write it
    config: type[BaseModel]
    default_config: str  # the built-in config --family picks when --config is left at its default
    create: Callable  # (opts, config, n_classes, special ids, vocab size) -> (model, PreprocessConfig)
    from_checkpoint: Callable  # (checkpoint config.json, config, n_classes) -> model
    pretrainer: Callable | None = None  # (config, max_len, special ids) -> the pre-training module
    export: Callable = ExportWrapper  # (model, unimodal) -> the module whose flat outputs ONNX records
    # attrx pretrain: where the encoder sits in the classifier's state dict, whether the pre-trainer
    # takes the tokenizer's [MASK] id, and the PretrainConfig fields that apply to this family only
    encoder_prefix: str = ""
    mask_token: bool = False
    pretrain_fields: tuple[str, ...] = ()


def pretrained_folder(folder: str, family: str) -> dict:
    """The config.json of a folder `attrx pretrain --family FAMILY` wrote (ValueError otherwise)."""
    src = json.loads((Path(folder) / "config.json").read_text())
    if src.get("kind") != "pretrained-encoder" or src.get("family") != family:
        raise ValueError(f"--init-from {folder}: not a {family} pre-training folder (made by attrx pretrain "
                         f"--family {family})")
    return src


def load_encoder(model: nn.Module, folder: str) -> None:
    """A pre-trained encoder's weights into a new classifier (its heads stay as initialised)."""
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=False)
    if unexpected or any(not k.startswith("heads.") for k in missing):
        raise ValueError(f"--init-from {folder}: encoder weights do not fit "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")

