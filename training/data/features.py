"""A locked CNN image tower's outputs, computed once per training product and kept on disk.

With `--lock-image` the tower never changes, so running it on every image in every epoch only
repeats work: its outputs (the [CLS] and the grid tokens, [1 + h*w, D]) are computed once, stored
as float16 in a file named by a key over the images (the decoded-image store's key), the tower and
its weights, and read by the loader's workers like the images. With `--image-cache DIR` the file
stays there and a later run with the same images and tower starts warm; otherwise it is scratch in
the output folder. Trade: the tower's input is fixed, so per-epoch image augmentation no longer
reaches it (the colour histogram still reads the pixels).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from attrx.training.data.encode import Encoded
from attrx.training.data.imagestore import cache_key
from attrx.training.models.towers import CnnTower

FORMAT = 1


class FeatureStore:
    """The tower's outputs for the training rows: `take(idx)` maps catalog indices to their rows."""

    def __init__(self, path: Path, rows: np.ndarray, shape: tuple[int, int], n_items: int):
        self.path, self.shape = path, shape
        self.row_of = np.full(n_items, -1, dtype=np.int64)
        self.row_of[rows] = np.arange(len(rows))
        self.array = np.memmap(path, dtype=np.float16, mode="r", shape=(len(rows), *shape))

    def take(self, idx: np.ndarray) -> torch.Tensor:
        rows = self.row_of[idx]
        if (rows < 0).any():
            raise KeyError("features asked for products outside the training and validation splits")
        return torch.from_numpy(np.asarray(self.array[rows], dtype=np.float32))


class BlankFeatures:
    """The locked tower's outputs on a dropped image (all-zero pixels, as served): one input, so one
    output, computed once and given to every row (the calibration's image-dropped copy)."""

    def __init__(self, model: torch.nn.Module, pixels: np.ndarray):
        device = next(model.parameters()).device
        was = model.vision.training
        model.vision.eval()
        with torch.no_grad():
            blank = torch.zeros((1, *pixels.shape[1:]), dtype=torch.float32, device=device)
            self.feats = model.vision(blank).last_hidden_state.float().cpu()
        model.vision.train(was)

    def take(self, idx: np.ndarray) -> torch.Tensor:
        return self.feats.expand(len(idx), *self.feats.shape[1:])


def cachable(model: torch.nn.Module, lock_image: bool) -> bool:
    return lock_image and getattr(getattr(model, "vision", None), "outputs_reusable", False)


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def feature_key(catalog_file: Path, data: Encoded, pre, tower: CnnTower, rows: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(cache_key(catalog_file, pre, data.products).encode())
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    h.update(json.dumps({"format": FORMAT, "tower": tower.config.to_dict(), "weights": weights_digest(tower)},
                        sort_keys=True).encode())
    return h.hexdigest()[:24]


def tower_features(model, data: Encoded, rows: np.ndarray, folder: Path, catalog_file: Path, pre, *,
                   device: torch.device, batch: int = 128, progress: bool = True) -> tuple[FeatureStore, bool]:
    """(the store, whether it was already there): the locked tower's outputs for `rows`."""
    tower = model.vision
    key = feature_key(catalog_file, data, pre, tower, rows)
    folder.mkdir(parents=True, exist_ok=True)
    path, meta = folder / f"features-{key}.f16", folder / f"features-{key}.json"
    if path.is_file() and meta.is_file():
        shape = tuple(json.loads(meta.read_text())["shape"])
        return FeatureStore(path, rows, shape, len(data)), True
    tower.eval()
    tmp = path.with_suffix(".partial")
    out = None
    with torch.no_grad():
        for s in tqdm(range(0, len(rows), batch), desc="image tower features", unit="batch", disable=not progress):
            idx = rows[s:s + batch]
            pixels = torch.from_numpy(np.ascontiguousarray(data.take(idx)["pixel_values"])).to(device)
            feats = tower(pixels).last_hidden_state.to("cpu", torch.float16).numpy()
            if out is None:
                out = np.memmap(tmp, dtype=np.float16, mode="w+", shape=(len(rows), *feats.shape[1:]))
            out[s:s + len(idx)] = feats
    out.flush()
    shape = tuple(out.shape[1:])
    del out
    tmp.rename(path)
    meta.write_text(json.dumps({"key": key, "shape": list(shape), "rows": len(rows), "tower": tower.config.to_dict()}))
    return FeatureStore(path, rows, shape, len(data)), False
