"""The training loop: losses (fused heads + unimodal auxiliary heads), modality dropout, one epoch,
validation, and a stage that stops early and keeps the best weights across stages."""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from attrx.training.data.augment import TitleSilencer, augment_images
from attrx.training.data.encode import IGNORE, Encoded
from attrx.training.data.loader import batches
from attrx.training.device import Compute
from attrx.training.distributed import Dist
from attrx.training.evaluation.predict import predict_probs
from attrx.training.optim import adamw, trainable_params
from attrx.training.params import STAGES, TrainConfig
from attrx.training.prepare import Prepared, data_workers
from attrx.training.schedule import scheduler


def _ce(logits: list[torch.Tensor], labels: torch.Tensor, rows: torch.Tensor | None = None,
        item_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over tasks of the mean cross-entropy on labelled items (and, with rows, only those rows;
    with item_weights, a weighted mean: trusted labels count more). Masked, not indexed: no step
    waits on the GPU to learn how many items are labelled."""
    total = labels.new_zeros((), dtype=torch.float32)
    for j, lg in enumerate(logits):
        ok = labels[:, j] >= 0
        if rows is not None:
            ok = ok & rows
        per_item = F.cross_entropy(lg, labels[:, j].clamp(min=0), reduction="none")
        weight = ok.to(per_item.dtype)
        if item_weights is not None:
            weight = weight * item_weights
        total = total + (per_item * weight).sum() / weight.sum().clamp(min=1e-6)
    return total


class TrainForward(torch.nn.Module):
    """The training forward (fused outputs, aux text logits, aux image logits) as a module's
    forward, so that DistributedDataParallel sees it and syncs its gradients."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **batch):
        if hasattr(self.model, "forward_train"):
            return self.model.forward_train(**batch)
        return self.model(**batch), [], []  # MoMo: fused heads only


def _loss(outputs, batch: dict[str, torch.Tensor], labels: torch.Tensor, aux_weight: float,
          item_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The fused heads' loss, plus the unimodal auxiliary heads' (each on the items that have
    that modality) weighted by aux_weight; item_weights weigh the batch's items (None: equally).
    A model may return a fourth element (SIMLA): {"loss": a loss term added as it is}."""
    fused, aux_t, aux_i, *more = outputs
    extra = more[0] if more else {}
    loss = _ce([lg for lg, _ in fused], labels, item_weights=item_weights)
    if aux_t and aux_weight > 0:
        loss = loss + aux_weight * (_ce(aux_t, labels, batch["text_present"] > 0, item_weights)
                                    + _ce(aux_i, labels, batch["image_present"] > 0, item_weights))
    return loss + extra["loss"] if "loss" in extra else loss


def _modality_dropout(batch: dict[str, torch.Tensor], p: float, gen: torch.Generator) -> None:
    """Hide the title or the image (never both) of a random fraction p of the batch, in place, on
    the batch's device (drawing from `gen`, on that device)."""
    if p <= 0:
        return
    tp, ip = batch["text_present"], batch["image_present"]
    both = (tp > 0) & (ip > 0)
    drop = (torch.rand(tp.shape, generator=gen, device=tp.device) < p) & both
    hide_text = drop & (torch.rand(tp.shape, generator=gen, device=tp.device) < 0.5)
    tp.masked_fill_(hide_text, 0.0)  # not tp[mask] = 0: boolean indexing waits for the GPU
    ip.masked_fill_(drop & ~hide_text, 0.0)


def _validate(model, data: Encoded, idx: np.ndarray, dist: Dist | None = None,
              features=None) -> tuple[float, list[float | None]]:
    """Validation loss (sum over attributes of the mean NLL) and per-attribute accuracy. Under
    torchrun each rank scores a disjoint share and the sums are all-reduced: exact, no duplicates."""
    dist = dist or Dist()
    share = dist.shard(idx)
    probs, _ = predict_probs(model, data, share, features=features)
    y = data.labels[share]
    n_attr = data.labels.shape[1]
    sums = np.zeros((n_attr, 4))  # nll sum, items with a class, correct, items with a label
    for j, p in enumerate(probs):
        ok, lab = y[:, j] >= 0, y[:, j] != IGNORE
        sums[j] = [-np.log(np.clip(p[ok, y[ok, j]], 1e-12, None)).sum(), ok.sum(),
                   (p[lab].argmax(1) == y[lab, j]).sum(), lab.sum()]
    sums = dist.sum(sums)
    loss = float(sum(s[0] / s[1] for s in sums if s[1] > 0))
    return loss, [float(s[2] / s[3]) if s[3] > 0 else None for s in sums]


class Best:
    """The lowest validation loss seen so far, across stages, and the weights that reached it."""

    def __init__(self):
        self.loss, self.state, self.where = float("inf"), None, ""

    def offer(self, loss: float, model: torch.nn.Module, where: str) -> bool:
        if loss < self.loss:
            self.loss, self.state, self.where = loss, copy.deepcopy(model.state_dict()), where
            return True
        return False


@dataclass
class Run:
    """One training run's moving parts, shared by its stages."""
    model: torch.nn.Module
    data: Prepared
    cfg: TrainConfig
    compute: Compute
    dist: Dist
    gen: torch.Generator  # modality dropout and augmentation, on the device (seeded per rank)
    silencer: TitleSilencer | None  # runs in the loader's workers, a generator per batch
    log: object
    epochs_done: int = 0
    features: object = None  # a locked CNN tower's cached outputs (training/data/features.py), or None
    item_weights: np.ndarray | None = None  # per catalog row, its loss weight (attrx improve: trusted labels)

    def weights_for(self, idx, device) -> torch.Tensor | None:
        if self.item_weights is None:
            return None
        return torch.from_numpy(self.item_weights[np.asarray(idx)].astype(np.float32)).to(device)


def _train_epoch(r: Run, fwd, params, opt, sched, stage: str, desc: str) -> float:
    model, run, cfg, compute = r.model, r.data, r.cfg, r.compute
    model.train()
    if stage != "e2e":  # frozen towers stay in eval mode
        for m in model.tower_modules():
            m.eval()
    order = run.tr[r.dist.train_order(len(run.tr), r.epochs_done, cfg.seed)]
    per_rank = max(1, cfg.batch_size // r.dist.world)  # --batch-size is the global batch
    total, n, step = 0.0, 0, 0
    bar = tqdm(total=len(order), desc=desc, unit="item", leave=False, disable=None if cfg.progress else True)
    source = batches(run.data, order, per_rank, workers=data_workers(cfg), pin=compute.cuda, silencer=r.silencer,
                     epoch=r.epochs_done, features=r.features)
    for idx, batch, labels in compute.prefetch(source):
        _modality_dropout(batch, cfg.modality_dropout, r.gen)
        if cfg.augment_images and r.features is None:  # cached tower outputs: its input is fixed
            batch["pixel_values"] = augment_images(batch["pixel_values"], batch["image_present"], r.gen)
        with compute.autocast():
            loss = _loss(fwd(**batch), batch, labels, cfg.aux_loss_weight, r.weights_for(idx, labels.device))
        opt.zero_grad(set_to_none=True)
        compute.step(loss, opt, params)
        sched.step()
        total = total + loss.detach() * len(idx)  # a device tensor: no synchronising on every step
        n, step = n + len(idx), step + 1
        bar.update(len(idx))
        if not bar.disable and step % 20 == 1:  # reading the loss waits for the GPU: now and then
            bar.set_postfix(loss=f"{float(total) / n:.3f}", refresh=False)
    bar.close()
    total = float(total)
    r.epochs_done += 1
    total, n = r.dist.sum(np.array([total, n]))  # the mean over every rank's items
    return float(total / max(1, n))


def run_stage(stage: str, r: Run, best: Best) -> None:
    """One stage from the best weights so far; stops early after `patience` epochs without a
    better validation loss."""
    model, run, cfg = r.model, r.data, r.cfg
    epochs, lr = getattr(cfg, f"{stage}_epochs"), getattr(cfg, f"{stage}_lr")
    if best.state is not None:
        model.load_state_dict(best.state)
    params = trainable_params(model, stage, cfg.lock_image)
    fwd = r.dist.wrap(TrainForward(model))  # per stage: DDP registers the parameters that train now
    opt = adamw(model, params, cfg.weight_decay, lr)
    steps = epochs * math.ceil(len(run.tr) / r.dist.world / max(1, cfg.batch_size // r.dist.world))
    sched = scheduler(opt, steps)
    attrs, stale = list(run.classes), 0
    for epoch in range(1, epochs + 1):
        t0 = time.time()
        train_loss = _train_epoch(r, fwd, params, opt, sched, stage, f"{stage} {epoch}/{epochs}")
        val_loss, val_acc = _validate(model, run.data, run.va, r.dist, r.features)
        improved = best.offer(val_loss, model, f"{stage} epoch {epoch}")
        rec = {"stage": stage, "epoch": epoch, "train_loss": round(train_loss, 5), "val_loss": round(val_loss, 5),
               "val_accuracy": {a: None if v is None else round(v, 4) for a, v in zip(attrs, val_acc, strict=True)},
               "lr": lr, "best": improved, "seconds": round(time.time() - t0, 2)}
        if r.dist.main:
            r.log.write(json.dumps(rec) + "\n")
            r.log.flush()
        accs = " ".join(f"{a}={v:.3f}" for a, v in zip(attrs, val_acc, strict=True) if v is not None)
        print(f"{stage} {epoch}/{epochs}: train_loss {train_loss:.4f} val_loss {val_loss:.4f} val_acc {accs} "
              f"({rec['seconds']:.1f}s){' *' if improved else ''}", flush=True)
        stale = 0 if improved else stale + 1
        if cfg.patience and stale >= cfg.patience and epoch < epochs:
            print(f"{stage}: no better validation loss for {stale} epochs, stage ends early", flush=True)
            break


def fit(r: Run) -> Best:
    """Every stage of r.cfg with epochs, in order; the model ends with the best weights seen."""
    best = Best()
    for stage in STAGES:
        if getattr(r.cfg, f"{stage}_epochs"):
            run_stage(stage, r, best)
    r.model.load_state_dict(best.state)
    return best
