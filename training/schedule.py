"""The learning-rate schedule of each training stage: linear warm-up over 5% of the steps, then cosine."""

from __future__ import annotations

import math

import torch


def warmup_cosine(steps: int):
    """The LR multiplier at each step of a stage of `steps` steps."""
    warm = max(1, int(0.05 * steps))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    return f


def scheduler(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps))


def pretraining_schedule(opt: torch.optim.Optimizer, lr: float, steps: int):
    """attrx pretrain's schedule: one cycle (10% warm-up) from 20 steps on; below that, where
    OneCycleLR's warm-up would be under one step (it divides by zero), warm-up and cosine."""
    if steps >= 20:
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    return scheduler(opt, max(1, steps))

