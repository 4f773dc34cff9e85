"""`attrx train` under torchrun: DistributedDataParallel with gloo on CPU, nccl on CUDA.

    torchrun --nproc-per-node 2 $(which attrx) train --catalog ... --out ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is one process and every helper
here is a no-op. The training data is sharded by a DistributedSampler (set_epoch each epoch);
validation is split into disjoint shards (no sampler padding, so nothing is counted twice) and its
sums are all-reduced; rank 0 alone writes logs and the checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as td


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.on:
            td.barrier()

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over the ranks (float64)."""
        if not self.on:
            return values
        t = torch.as_tensor(values, dtype=torch.float64)
        if td.get_backend() == "nccl":
            t = t.cuda()
        td.all_reduce(t)
        return t.cpu().numpy()

    def train_order(self, n: int, epoch: int, seed: int) -> np.ndarray:
        """This rank's positions into the training items for `epoch` (shuffled, sharded)."""
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(range(n), num_replicas=self.world, rank=self.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return np.fromiter(iter(sampler), dtype=np.int64)

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """A disjoint share of idx: every item in exactly one rank's share, none repeated."""
        return idx[self.rank :: self.world]

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self.on:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.local_rank] if td.get_backend() == "nccl" else None
        # frozen towers (warm-up, tuning) and single-modality heads leave parameters unused
        return DDP(module, device_ids=ids, find_unused_parameters=True)

    def close(self) -> None:
        if self.on and td.is_initialized():
            td.destroy_process_group()


def setup(device: torch.device) -> Dist:
    """Join the torchrun group if there is one (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local)
