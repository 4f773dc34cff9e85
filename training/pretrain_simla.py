"""`attrx pretrain --family simla`: every SIMLA task (training/models/simla_pretrain.py, built by the
model factory) on each
batch of title-image pairs, one optimizer step over their sum, each loss logged per step."""

from __future__ import annotations

import json

import numpy as np
import torch
from tqdm import tqdm

from attrx.training.optim import param_groups
from attrx.training.schedule import pretraining_schedule


def prepare_simla(model, cfg) -> None:
    """Start a CNN image tower from its ImageNet weights (the `vision` extra), and lock it if asked."""
    mcfg = model.cfg
    model.xmm_ratio, model.mlm_ratio = cfg.xmm_ratio, cfg.mlm_ratio
    if mcfg.image_tower != "vit" and mcfg.image_pretrained:
        model.encoder.vision.load_pretrained()
    if cfg.lock_image:
        if mcfg.image_tower == "vit":
            raise ValueError("--lock-image keeps a pretrained CNN image tower as it is; this config's ViT starts "
                             "from random weights")
        for p in model.encoder.vision.parameters():
            p.requires_grad_(False)


def run_simla(model, arrays: dict[str, torch.Tensor], pairs, gen, cfg, log) -> dict[str, list[float]]:
    """cfg.steps steps on batches drawn from `pairs` (an iterator of row indices)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(param_groups(model, params, cfg.weight_decay), lr=cfg.lr)
    sched = pretraining_schedule(opt, cfg.lr, cfg.steps)
    ids, mask, px = (arrays[k] for k in ("input_ids", "attention_mask", "pixel_values"))
    hist: dict[str, list[float]] = {}
    bar = tqdm(range(cfg.steps), desc="pretrain simla", unit="step", disable=None if cfg.progress else True)
    for step in bar:
        b = next(pairs)
        losses = model.losses(ids[b], mask[b], px[b], gen)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
        sched.step()
        rec = {k: float(v.detach()) for k, v in losses.items()}
        for k, v in rec.items():
            hist.setdefault(k, []).append(v)
        log.write(json.dumps({"stage": 1, "step": step + 1, **{k: round(v, 5) for k, v in rec.items()}}) + "\n")
        bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items()})
    if cfg.steps:
        summary = ", ".join(f"{k} {np.mean(v[:5]):.3f} -> {np.mean(v[-5:]):.3f}" for k, v in hist.items())
        print(f"simla: {cfg.steps} steps, {summary}", flush=True)
    return hist if cfg.steps else {}
