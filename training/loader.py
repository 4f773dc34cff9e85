"""Training batches through a DataLoader: worker processes read (or, in memory, slice) each batch
while the model trains on the previous one, with a bounded prefetch (2 batches per worker)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from attrx.training.checkpoint import torch_inputs
from attrx.training.data import Encoded


class BatchReader(Dataset):
    """Indexed by a batch's item indices; returns (indices, model inputs, labels)."""

    def __init__(self, data: Encoded):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: np.ndarray):
        return idx, torch_inputs(self.data.take(idx)), torch.from_numpy(self.data.labels[idx])


def batches(data: Encoded, order: np.ndarray, batch_size: int, *, workers: int = 0, pin: bool = False
            ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor], torch.Tensor]]:
    """The items of `order`, in that order, `batch_size` at a time."""
    plan: Iterable[np.ndarray] = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    reader = BatchReader(data)
    if workers == 0:
        yield from (reader[b] for b in plan)
        return
    loader = DataLoader(reader, sampler=plan, batch_size=None, num_workers=workers, prefetch_factor=2,
                        pin_memory=pin, multiprocessing_context="fork", persistent_workers=False)
    yield from loader
