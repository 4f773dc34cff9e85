"""A trained model's class probabilities and modality weights on encoded catalog rows: what
validation, calibration and `attrx eval` read (the served answer comes from the bundle instead)."""

from __future__ import annotations

import numpy as np
import torch

from attrx.training.checkpoint import torch_inputs
from attrx.training.data import Encoded


@torch.no_grad()
def predict_probs(model: torch.nn.Module, data: Encoded, idx: np.ndarray, batch_size: int = 256):
    """Class probabilities and modality weights per attribute for the items idx."""
    model.eval()
    device = next(model.parameters()).device
    probs, weights = None, None
    for s in range(0, len(idx), batch_size):
        batch = {k: v.to(device) for k, v in torch_inputs(data.take(idx[s : s + batch_size])).items()}
        outs = model(**batch)
        if probs is None:
            probs, weights = [[] for _ in outs], [[] for _ in outs]
        for j, (logits, w) in enumerate(outs):
            probs[j].append(torch.softmax(logits.float(), -1).cpu().numpy())
            weights[j].append(w.float().cpu().numpy())
    if probs is None:
        return [], []
    return [np.concatenate(p) for p in probs], [np.concatenate(w) for w in weights]
