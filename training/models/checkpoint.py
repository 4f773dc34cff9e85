"""Checkpoint folder: model.safetensors + config.json (model, label maps, preprocessing, training
args) + tokenizer.json. `attrx eval` adds metrics.json, calibration.json and plots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from attrx.service.contract.preprocess import PreprocessConfig, load_tokenizer
from attrx.training.models.factory import model_from_checkpoint_config

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"
CALIBRATION, METRICS = "calibration.json", "metrics.json"


@dataclass
class Checkpoint:
    path: Path
    model: torch.nn.Module  # any family: the same forward signature
    model_config: object  # its family's config class (models/registry.py: Family.config)
    classes: dict[str, list[str]]
    preprocess: PreprocessConfig
    tokenizer: Tokenizer
    meta: dict

    @property
    def attributes(self) -> list[str]:
        return list(self.classes)


def save_checkpoint(path: Path, model: torch.nn.Module, classes: dict, preprocess: PreprocessConfig,
                    tokenizer_file: Path, meta: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS))
    cfg = {
        "model": model.cfg.model_dump(),
        **({"text_config": model.text.config.to_dict(), "vision_config": model.vision.config.to_dict()}
           if model.family == "cma-clip" else {"token_spec": model.token_spec}),
        "attributes": classes,
        "preprocess": preprocess.model_dump(),
        **meta,
    }
    (path / CONFIG).write_text(json.dumps(cfg, indent=2, default=str))
    if tokenizer_file.resolve() != (path / TOKENIZER).resolve():
        (path / TOKENIZER).write_bytes(tokenizer_file.read_bytes())


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    for f in (WEIGHTS, CONFIG, TOKENIZER):
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path} is not an attrx checkpoint: {f} is missing (made by `attrx train`)")
    cfg = json.loads((path / CONFIG).read_text())
    pre = PreprocessConfig.model_validate(cfg["preprocess"])
    model, mcfg = model_from_checkpoint_config(cfg)
    missing, unexpected = model.load_state_dict(load_file(str(path / WEIGHTS)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path / WEIGHTS} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    tok = load_tokenizer(path / TOKENIZER, pre.max_text_len)
    return Checkpoint(path, model, mcfg, cfg["attributes"], pre, tok, cfg)


def torch_inputs(arrays: dict) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in arrays.items()}
