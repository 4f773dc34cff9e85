"""CMA-CLIP's towers from a local Hugging Face CLIP folder (`attrx train --init-from DIR`): the text and
image towers, CLIP's own projections into the joint space (so the fusion width is CLIP's
projection_dim), and CLIP's image normalisation. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from attrx.service.contract.preprocess import CLIP_MEAN, CLIP_STD, PreprocessConfig

PROJECTIONS = ("text_projection.weight", "visual_projection.weight")


def clip_preprocess(init_from: Path, image_size: int, max_len: int) -> PreprocessConfig:
    mean, std = CLIP_MEAN, CLIP_STD
    pp = init_from / "preprocessor_config.json"
    if pp.is_file():
        d = json.loads(pp.read_text())
        mean, std = tuple(d.get("image_mean", mean)), tuple(d.get("image_std", std))
    return PreprocessConfig(image_size=image_size, image_mean=mean, image_std=std, max_text_len=max_len)


def clip_projections(src: Path) -> dict[str, torch.Tensor]:
    """CLIP's `text_projection` and `visual_projection` weights from a saved CLIPModel folder
    ({} when the folder holds none, e.g. a bare CLIPTextModel)."""
    from safetensors import safe_open

    files = sorted(src.glob("*.safetensors"))
    want = set(PROJECTIONS)
    found = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            found.update({k: sf.get_tensor(k) for k in want & set(sf.keys())})
    if not files and (src / "pytorch_model.bin").is_file():
        state = torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
        found = {k: state[k] for k in want if k in state}
    return found


def load_clip_towers(src: Path, mcfg):
    """(the config fitted to the folder, {text_model, vision_model}, CLIP's projections, preprocessing)."""
    from transformers import CLIPTextModel, CLIPVisionModel
    from transformers.utils import logging as hf_logging

    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"--init-from {src}: no config.json; point it to a local Hugging Face CLIP folder")
    hf_logging.set_verbosity_error()  # a full CLIP folder holds both towers: each load skips the other's keys
    tm = CLIPTextModel.from_pretrained(src)
    vm = CLIPVisionModel.from_pretrained(src)
    proj = clip_projections(src)
    max_len = min(int(mcfg.preprocess.get("max_text_len", 77)), tm.config.max_position_embeddings)
    update = {"preprocess": {**mcfg.preprocess, "max_text_len": max_len, "image_size": vm.config.image_size}}
    if len(proj) == 2:
        width = proj["text_projection.weight"].shape[0]
        if width % mcfg.fusion.num_heads:
            raise ValueError(f"--init-from {src}: CLIP's projection_dim {width} is not divisible by the config's "
                             f"{mcfg.fusion.num_heads} fusion heads")
        update["fusion"] = mcfg.fusion.model_copy(update={"width": width})
    else:
        print(f"--init-from {src}: no text_projection/visual_projection weights (not a saved CLIPModel); the "
              "projections into the fusion width start at random", flush=True)
    mcfg = mcfg.model_copy(update=update)
    pre = clip_preprocess(src, vm.config.image_size, max_len)
    return mcfg, {"text_model": tm, "vision_model": vm}, proj, pre


def copy_projections(model: nn.Module, proj: dict[str, torch.Tensor]) -> None:
    """T' and I' start from CLIP's projections (when the folder has both)."""
    if len(proj) != 2:
        return
    with torch.no_grad():
        for lin, key in ((model.proj_t, PROJECTIONS[0]), (model.proj_v, PROJECTIONS[1])):
            lin.weight.copy_(proj[key])
            lin.bias.zero_()
