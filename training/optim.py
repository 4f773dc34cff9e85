"""What trains in each stage, and the AdamW parameter groups (open_clip's weight-decay rule)."""

from __future__ import annotations

import torch


def trainable_params(model: torch.nn.Module, stage: str, lock_image: bool = False) -> list[torch.nn.Parameter]:
    """Set requires_grad for a stage (warmup: everything but the towers;
    e2e: everything; tune: the heads only; --lock-image keeps the image tower frozen) and
    return the parameters that train."""
    for p in model.parameters():
        p.requires_grad_(stage == "e2e")
    if stage == "warmup":
        tower = {id(p) for p in model.tower_parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) not in tower)
    elif stage == "tune":
        for p in model.head_parameters():
            p.requires_grad_(True)
    if lock_image:  # locked-image tuning: the image tower never trains
        for p in model.image_tower_parameters():
            p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def param_groups(model: torch.nn.Module, params: list, weight_decay: float) -> list[dict]:
    """open_clip's rule: no weight decay on biases, norms, gains, embeddings (token, position,
    type), [CLS] tokens or the modality vectors `w`."""
    wanted = {id(p) for p in params}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if id(p) not in wanted:
            continue
        leaf = name.rsplit(".", 1)[-1]
        plain = p.ndim < 2 or "embedding" in name or leaf in ("w", "cls", "type_emb") or leaf.endswith("_pos")
        (no_decay if plain else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: torch.nn.Module, params: list, weight_decay: float, lr: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, params, weight_decay), lr=lr, foreach=True)
