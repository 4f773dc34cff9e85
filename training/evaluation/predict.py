"""A trained model's class probabilities and modality weights on encoded catalog rows: what
validation, calibration and `attrx eval` read (the served answer comes from the bundle instead)."""

from __future__ import annotations

import numpy as np
import torch

from attrx.training.data.encode import Encoded
from attrx.training.models.checkpoint import torch_inputs
from attrx.training.models.layers import with_unimodal


def model_batches(model: torch.nn.Module, data: Encoded, idx: np.ndarray, batch_size: int, features=None,
             source: np.ndarray | None = None):
    """The model's inputs for idx in batches, on its device; with `features`, the stored tower
    outputs of the catalog products source[idx] (idx itself when source is None)."""
    device = next(model.parameters()).device
    for s in range(0, len(idx), batch_size):
        part = idx[s : s + batch_size]
        batch = {k: v.to(device) for k, v in torch_inputs(data.take(part)).items()}
        if features is not None:
            batch["vision_features"] = features.take(part if source is None else source[part]).to(device)
        yield batch


@torch.no_grad()
def predict_probs(model: torch.nn.Module, data: Encoded, idx: np.ndarray, batch_size: int = 256,
                  features=None):
    """Class probabilities and modality weights per attribute for the items idx (with `features`, a
    locked tower's stored outputs stand in for running it: validation during training)."""
    model.eval()
    probs, weights = None, None
    for batch in model_batches(model, data, idx, batch_size, features):
        outs = model(**batch)
        if probs is None:
            probs, weights = [[] for _ in outs], [[] for _ in outs]
        for j, (logits, w) in enumerate(outs):
            probs[j].append(torch.softmax(logits.float(), -1).cpu().numpy())
            weights[j].append(w.float().cpu().numpy())
    if probs is None:
        return [], []
    return [np.concatenate(p) for p in probs], [np.concatenate(w) for w in weights]


@torch.no_grad()
def predict_outputs(model: torch.nn.Module, data: Encoded, idx: np.ndarray, batch_size: int = 256,
                    features=None, source: np.ndarray | None = None) -> dict:
    """Per attribute: fused probabilities, modality weights, title-only and image-only probabilities
    (the outputs a bundle with unimodal outputs serves): {"probs", "weights", "text", "image"}.
    With `features` (a locked tower's stored outputs, training/data/features.py) the row idx[i] reads
    the stored outputs of the catalog product source[idx[i]] instead of running the tower."""
    model.eval()
    out: dict[str, list] = {}
    for batch in model_batches(model, data, idx, batch_size, features, source):
        fused, text, image = with_unimodal(model, **batch)
        parts = {"probs": [lg for lg, _ in fused], "weights": [w for _, w in fused], "text": text, "image": image}
        for name, ts in parts.items():
            lists = out.setdefault(name, [[] for _ in ts])
            for j, t in enumerate(ts):
                t = t.float() if name == "weights" else torch.softmax(t.float(), -1)
                lists[j].append(t.cpu().numpy())
    return {name: [np.concatenate(x) for x in lists] for name, lists in out.items()}
