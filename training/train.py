"""`attrx train`: the paper's three stages on a catalog.

1. warm-up: text and image towers frozen; sequence-wise attention, modality-wise attention and
   heads train;
2. end-to-end: everything trains;
3. tuning: only the modality-wise attention vectors and the MLP heads train.

AdamW (weight decay 1e-4 by default), linear warm-up + cosine learning-rate schedule per stage,
and at the end of each stage the checkpoint with the lowest validation loss is carried into the
next one (as in the paper). Per-epoch metrics go to train_log.jsonl.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from attrx.training.data.augment import TitleSilencer
from attrx.training.data.loader import default_threads
from attrx.training.device import Compute
from attrx.training.device import resolve as resolve_compute
from attrx.training.distributed import Dist
from attrx.training.distributed import setup as setup_distributed
from attrx.training.evaluation.calibration import calibrate_checkpoint
from attrx.training.evaluation.constraint_learning import checkpoint_constraints
from attrx.training.evaluation.family_calibration import read_declared, write_declared
from attrx.training.loop import Best, Run, fit
from attrx.training.models.checkpoint import save_checkpoint
from attrx.training.models.factory import resolve_config
from attrx.training.params import TrainConfig
from attrx.training.prepare import Prepared, prepare
from attrx.training.tracking import EpochLog

__all__ = ["TrainConfig", "train"]


def train(cfg: TrainConfig, tracker=None) -> Path:
    """Train in this process, or as one rank of a torchrun group (rank 0 writes everything). tracker:
    an attrx.training.tracking.Tracker that also gets each epoch's metrics (rank 0)."""
    resolve_config(cfg.config, cfg.family)  # an unknown family or config fails here, before any work
    compute = resolve_compute(cfg.device, cfg.amp)
    dist = setup_distributed(compute.device)
    try:
        quiet = contextlib.nullcontext() if dist.main else contextlib.redirect_stdout(io.StringIO())
        with quiet:
            return _train(cfg, compute, dist, tracker if dist.main else None)
    finally:
        dist.close()


def _train(cfg: TrainConfig, compute: Compute, dist: Dist, tracker=None) -> Path:
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or default_threads())
    if cfg.init_from and not (Path(cfg.init_from) / "config.json").is_file():
        raise FileNotFoundError(f"--init-from {cfg.init_from}: no config.json; point it to a local Hugging Face CLIP folder")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run, cfg = prepare(cfg.model_copy(update={"progress": cfg.progress and dist.main}), out, dist)
    model = run.model.to(compute.device)
    where = f" x {dist.world} processes" if dist.on else ""
    print(f"training on {compute.device.type}{where} at {compute.precision}", flush=True)
    silencer = TitleSilencer(run.matcher_words, cfg.silence_title, run.tok, cfg.seed + dist.rank) \
        if cfg.silence_title else None
    features = locked_features(cfg, run, compute, dist, out)
    with open(out / "train_log.jsonl", "w") if dist.main else contextlib.nullcontext() as log:
        log = EpochLog(log, tracker) if tracker is not None else log
        best = fit(Run(model, run, cfg, compute, dist, compute.generator(cfg.seed + dist.rank), silencer, log,
                       features=features))
    model = model.to("cpu")  # the checkpoint and the calibration are device-free
    print(f"best validation loss {best.loss:.4f} ({best.where}): these weights are the checkpoint", flush=True)
    if dist.main:
        _save(out, model, run, cfg, best, t_start, features)
    _clean_scratch(out, cfg, dist)
    return out


def locked_features(cfg: TrainConfig, run: Prepared, compute: Compute, dist: Dist, out: Path):
    """A locked CNN tower's outputs for the training and validation rows, computed once (rank 0;
    the others read its file), or None when the tower trains or is not a CNN."""
    from attrx.training.data import features

    if not features.cachable(run.model, cfg.lock_image):
        return None
    folder = Path(cfg.image_cache) if cfg.image_cache else out / ".features"
    rows = np.concatenate([run.tr, run.va])
    if not dist.main:
        dist.barrier()
    t0 = time.time()
    store, warm = features.tower_features(run.model, run.data, rows, folder, run.catalog_file or Path(cfg.catalog), run.pre,
                                          device=compute.device, progress=cfg.progress and dist.main)
    if dist.main:
        dist.barrier()
    print(f"locked image tower: its outputs for {len(rows)} training and validation products "
          f"{'read from the cache' if warm else 'computed once'} in {folder} ({time.time() - t0:.1f}s); image "
          "augmentation does not reach it", flush=True)
    return store


def _save(out: Path, model, run: Prepared, cfg: TrainConfig, best: Best, t_start: float, features=None) -> None:
    meta = {"training": cfg.model_dump(), "split": {"val_frac": cfg.val_frac, "test_frac": cfg.test_frac},
            "other_for": run.other_for, "label_words": run.label_words, "best": best.where,
            "train_seconds": round(time.time() - t_start, 1),
            "counts": {"train": len(run.tr), "val": len(run.va), "test": len(run.data.indices("test")),
                       "skipped": len(run.errors)}}
    save_checkpoint(out, model, run.classes, run.pre, run.tok_file, meta)
    constraints = None
    if cfg.constraints == "learn" or cfg.taxonomy:
        train_products = [run.data.products[i] for i in run.data.indices("train")]
        constraints = checkpoint_constraints(out, train_products, run.classes, cfg.constraints == "learn",
                                             cfg.taxonomy)
    write_declared(out, cfg.families, list(run.classes))
    calibrate_checkpoint(out, model, run.data, run.va, run.classes, run.tok, run.label_words, constraints,
                         features=features, variants=run.label_variants, families=read_declared(out))
    print(f"checkpoint written to {out}, thresholds calibrated on the validation split ({meta['train_seconds']:.0f}s)")


def _clean_scratch(out: Path, cfg: TrainConfig, dist: Dist) -> None:
    """The decoded-image file of a run without --image-cache goes; a cache the user named stays."""
    dist.barrier()
    if dist.main:
        (out / ".images.f32").unlink(missing_ok=True)
        shutil.rmtree(out / ".features", ignore_errors=True)
        if not cfg.image_cache:
            shutil.rmtree(out / ".image-cache", ignore_errors=True)
