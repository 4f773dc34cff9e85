"""Training batches through a DataLoader: worker processes read (or, in memory, slice) each batch,
and silence its titles, while the model trains on the previous one, with a bounded prefetch (2
batches per worker) into pinned memory when training on a GPU. Compute.prefetch then copies the
next batch to the GPU while the current one computes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from attrx.training.data.encode import Encoded
from attrx.training.models.checkpoint import torch_inputs


class BatchReader(Dataset):
    """Indexed by (key, a batch's item indices); returns (indices, model inputs, labels). With a
    silencer, the batch's titles lose label words here, in the worker, drawing from the batch's own
    generator (key: epoch, batch number)."""

    def __init__(self, data: Encoded, silencer=None, features=None):
        self.data, self.silencer, self.features = data, silencer, features

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: tuple[tuple[int, ...], np.ndarray]):
        key, idx = item
        inputs = torch_inputs(self.data.take(idx))
        if self.silencer is not None:
            self.silencer([self.data.products[i].title for i in idx], inputs, rng=self.silencer.rng_for(key))
        if self.features is not None:  # a locked tower's outputs, computed once (training/data/features.py)
            inputs["vision_features"] = self.features.take(idx)
        return idx, inputs, torch.from_numpy(self.data.labels[idx])


def batches(data: Encoded, order: np.ndarray, batch_size: int, *, workers: int = 0, pin: bool = False,
            silencer=None, epoch: int = 0, features=None) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor], torch.Tensor]]:
    """The items of `order`, in that order, `batch_size` at a time."""
    plan = [((epoch, k), order[s : s + batch_size]) for k, s in enumerate(range(0, len(order), batch_size))]
    reader = BatchReader(data, silencer, features)
    if workers == 0:
        yield from (reader[b] for b in plan)
        return
    loader = DataLoader(reader, sampler=plan, batch_size=None, num_workers=workers, prefetch_factor=2,
                        pin_memory=pin, multiprocessing_context="fork", persistent_workers=False)
    yield from loader


def default_threads() -> int:
    """The cores this process may use (its CPU affinity), at least 1."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
