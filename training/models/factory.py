"""A config name or file -> a config -> a model, through the family registry (the shape of open_clip's
factory.py with its model_configs/*.json). Training, evaluation, export and pre-training build models
only through these functions; none of them names a family."""

from __future__ import annotations

import json

from pydantic import BaseModel
from torch import nn

from attrx.service.contract.preprocess import PreprocessConfig
from attrx.training.models.configs import config_path
from attrx.training.models.family import Family
from attrx.training.models.registry import FAMILIES


def list_families() -> list[str]:
    return list(FAMILIES)


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def load_config(name_or_path: str) -> BaseModel:
    """A built-in name (`tiny`, `base`, `momo-tiny`, ...) or a path to a JSON file; the file's `family`
    picks the schema."""
    return config_from_dict(json.loads(config_path(name_or_path).read_text()))


def config_from_dict(data: dict) -> BaseModel:
    """A model config document (a config file, or a checkpoint's "model") -> its family's schema (a
    document without `family` is CMA-CLIP's, as the first configs were)."""
    return family(data.get("family", "cma-clip")).config.model_validate(data)


def resolve_config(name: str, family_name: str | None = None) -> BaseModel:
    """The model config named by --config, checked against --family (a family's own default config
    replaces the default `tiny`)."""
    if family_name and name == "tiny":
        name = family(family_name).default_config
    mcfg = load_config(name)
    if family_name and mcfg.family != family_name:
        raise ValueError(f"--config {name} is a {mcfg.family} config but --family is {family_name}")
    return mcfg


def create_model(opts, n_classes: list[int], special: dict[str, int], vocab: int) -> tuple[nn.Module, PreprocessConfig]:
    """A new model and its preprocessing for a training run. `opts` carries the run's options
    (`attrx.training.params.TrainConfig`): config, family, init_from and the ablation flags."""
    mcfg = resolve_config(opts.config, opts.family)
    return family(mcfg.family).create(opts, mcfg, n_classes, special, vocab)


def model_from_checkpoint_config(cfg: dict) -> tuple[nn.Module, BaseModel]:
    """An untrained model of a checkpoint's architecture (its config.json), ready for its weights."""
    n_classes = [len(c) for c in cfg["attributes"].values()]
    mcfg = config_from_dict(cfg["model"])
    return family(mcfg.family).from_checkpoint(cfg, mcfg, n_classes), mcfg


def create_pretrainer(mcfg, max_len: int, special: dict[str, int]) -> nn.Module:
    """The family's encoders with every pre-training task's decoders and heads."""
    fam = family(mcfg.family)
    if fam.pretrainer is None:
        raise ValueError(f"pre-training is for {', '.join(f.name for f in FAMILIES.values() if f.pretrainer)}; "
                         f"this is a {mcfg.family} config")
    return fam.pretrainer(mcfg, max_len, special)


def export_module(model: nn.Module, unimodal: bool = False) -> nn.Module:
    """The model with its outputs flattened for ONNX (per task: probabilities, modality weights, and
    with `unimodal` the title-only and image-only probabilities)."""
    return family(model.family).export(model, unimodal)
