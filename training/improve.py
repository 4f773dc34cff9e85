"""`attrx improve`: a checkpoint fine-tuned on its training catalog plus reviewed corrections.

- Starts from the checkpoint's weights, classes, tokenizer, preprocessing and training options.
- Trains on the catalog's training split plus the reviewed products (a corrections catalog: id, title,
  image and the reviewed values; `attrx corrections` writes one from the review page's store). A
  reviewed product that is also a training product takes the reviewed values over the catalog's; its
  reviewed labels weigh `trusted_weight` in the loss.
- A reviewed product in the catalog's validation or test split is left out (and counted): training on
  it would bias the calibration and the test figures.
- Recalibrates on the validation split only. Reviewed products were chosen, not sampled, so
  calibrating on them would break the precision promise.
- With `evaluate`, `attrx eval` runs on the same test split before and after, and improvement.json
  holds accuracy, coverage and precision per attribute and situation, side by side.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from attrx.service.catalog.reader import Catalog, Product, read_catalog, write_errors
from attrx.service.contract.label_variants import VARIANTS_FILE
from attrx.training.data.encode import encode_catalog_on_disk, split_of
from attrx.training.data.loader import default_threads
from attrx.training.data.variant_learning import read_variants
from attrx.training.device import resolve as resolve_compute
from attrx.training.evaluation.constraint_learning import CONSTRAINTS, read_constraints
from attrx.training.evaluation.family_calibration import FAMILIES_FILE, read_declared
from attrx.training.models.checkpoint import TOKENIZER, load_checkpoint, save_checkpoint
from attrx.training.params import TrainConfig
from attrx.training.prepare import Prepared, data_workers

MODEL_KEYS = ("model", "text_config", "vision_config", "token_spec", "attributes", "preprocess")


class ImproveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: str
    catalog: str
    corrections: str
    out: str
    epochs: int = Field(2, ge=1)
    lr: float = Field(5e-4, gt=0)
    trusted_weight: float = Field(2.0, gt=0)
    evaluate: bool = True
    seed: int = 0
    threads: int | None = None
    progress: bool = True


def merge(catalog: Catalog, corrections: Catalog, split: dict) -> tuple[list[Product], set[str], dict]:
    """The products to encode (catalog rows, a corrected one with its reviewed values), the ids that
    train as reviewed, and the counts of what was used and left out."""
    by_id = {p.id: p for p in catalog.products}
    trusted, held_out = set(), []
    for c in corrections.products:
        base = by_id.get(c.id)
        if base is not None and split_of(c.id, **split) != "train":
            held_out.append(c.id)
            continue
        labels = {**(base.labels if base else {}), **{a: v for a, v in c.labels.items() if v is not None}}
        by_id[c.id] = replace(base or c, labels=labels)
        trusted.add(c.id)
    counts = {"reviewed_used": len(trusted), "reviewed_in_val_or_test_left_out": len(held_out),
              "reviewed_rows_unusable": len(corrections.errors)}
    return list(by_id.values()), trusted, counts


def _train_config(cfg: ImproveConfig, meta: dict) -> TrainConfig:
    known = TrainConfig.model_fields
    base = {("amp" if k == "precision" else k): v for k, v in meta["training"].items()}
    base = {k: v for k, v in base.items() if k in known}
    return TrainConfig.model_validate({**base, "catalog": cfg.catalog, "out": cfg.out, "warmup_epochs": 0,
                                       "e2e_epochs": cfg.epochs, "e2e_lr": cfg.lr, "tune_epochs": 0,
                                       "seed": cfg.seed, "threads": cfg.threads, "progress": cfg.progress})


def prepare_improvement(cfg: ImproveConfig, ck, tcfg: TrainConfig, out: Path) -> tuple[Prepared, np.ndarray, dict]:
    """The encoded catalog with the reviewed products, and their per-row loss weights."""
    sp = ck.meta.get("split", {})
    catalog = read_catalog(cfg.catalog, ck.attributes, require_labels=True)
    corrections = read_catalog(cfg.corrections, ck.attributes, require_labels=True)
    products, trusted, counts = merge(catalog, corrections, sp)
    merged = Catalog(catalog.path, products, catalog.errors, tuple(ck.attributes))
    data, img_errors, _ = encode_catalog_on_disk(merged, ck.tokenizer, ck.preprocess, ck.classes,
                                                 catalog_file=catalog.path, scratch=out,
                                                 cache_dir=tcfg.image_cache, workers=data_workers(tcfg),
                                                 progress=cfg.progress, other_for=ck.meta.get("other_for", []), **sp)
    is_trusted = np.array([p.id in trusted for p in data.products], dtype=bool)
    data.split[is_trusted] = "train"  # reviewed products outside the catalog train, whatever their id hashes to
    weights = np.where(is_trusted, cfg.trusted_weight, 1.0).astype(np.float32)
    errors = sorted([*catalog.errors, *img_errors], key=lambda e: e.line)
    write_errors(errors, out / "catalog_errors.jsonl")
    label_words = ck.meta.get("label_words") or {a: list(c) for a, c in ck.classes.items()}
    run = Prepared(ck.model, ck.preprocess, ck.tokenizer, ck.path / TOKENIZER, data, ck.classes, label_words,
                   ck.meta.get("other_for", []), data.indices("train"), data.indices("val"), errors,
                   label_variants=read_variants(ck.path) or {})
    counts.update(train=int(len(run.tr)), val=int(len(run.va)), reviewed_rows=int(is_trusted.sum()))
    return run, weights, counts


def improve(cfg: ImproveConfig, tracker=None) -> Path:
    from attrx.training.data.augment import TitleSilencer
    from attrx.training.distributed import Dist
    from attrx.training.loop import Run, fit
    from attrx.training.tracking import EpochLog
    from attrx.training.train import locked_features

    t0 = time.time()
    ck = load_checkpoint(cfg.checkpoint)
    out = Path(cfg.out)
    if out.resolve() == ck.path.resolve():
        raise ValueError("--out must be a new folder: the checkpoint it starts from stays as it is, for comparison")
    out.mkdir(parents=True, exist_ok=True)
    tcfg = _train_config(cfg, ck.meta)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or default_threads())
    compute = resolve_compute(tcfg.device, tcfg.amp)
    run, weights, counts = prepare_improvement(cfg, ck, tcfg, out)
    print(f"improve: {counts['reviewed_used']} reviewed products train at weight {cfg.trusted_weight:g} beside "
          f"{counts['train'] - counts['reviewed_rows']} catalog training products; "
          f"{counts['reviewed_in_val_or_test_left_out']} reviewed products in the validation or test split left out",
          flush=True)
    if counts["reviewed_used"] == 0:
        raise ValueError(f"{cfg.corrections}: no reviewed product can train (nothing answered, or all of them in the "
                         "catalog's validation or test split)")
    dist = Dist()
    features = locked_features(tcfg, run, compute, dist, out)
    silencer = TitleSilencer(run.matcher_words, tcfg.silence_title, run.tok, cfg.seed) if tcfg.silence_title else None
    model = ck.model.to(compute.device)
    with open(out / "train_log.jsonl", "w") as f:
        log = EpochLog(f, tracker) if tracker is not None else f
        best = fit(Run(model, run, tcfg, compute, dist, compute.generator(cfg.seed), silencer, log,
                       features=features, item_weights=weights))
    model = model.to("cpu")
    _save(out, ck, run, tcfg, cfg, best.where, counts, t0, features)
    shutil.rmtree(out / ".features", ignore_errors=True)
    (out / ".images.f32").unlink(missing_ok=True)
    if cfg.evaluate:
        compare_before_after(ck.path, out, cfg.catalog, cfg.progress)
    return out


def _save(out: Path, ck, run: Prepared, tcfg: TrainConfig, cfg: ImproveConfig, where: str, counts: dict,
          t0: float, features) -> None:
    from attrx.training.evaluation.calibration import calibrate_checkpoint

    meta = {k: v for k, v in ck.meta.items() if k not in MODEL_KEYS}
    meta.update(training=tcfg.model_dump(), best=where, train_seconds=round(time.time() - t0, 1),
                improved_from={"checkpoint": str(ck.path), "corrections": cfg.corrections,
                               "trusted_weight": cfg.trusted_weight, **counts})
    save_checkpoint(out, ck.model, run.classes, run.pre, run.tok_file, meta)
    for kept in (CONSTRAINTS, VARIANTS_FILE, FAMILIES_FILE):
        if (ck.path / kept).is_file():
            shutil.copyfile(ck.path / kept, out / kept)
    calibrate_checkpoint(out, ck.model, run.data, run.va, run.classes, run.tok, run.label_words,
                         read_constraints(out), features=features, variants=run.label_variants,
                         families=read_declared(out))
    print(f"improved checkpoint written to {out}; thresholds recalibrated on the validation split only "
          f"({meta['train_seconds']:.0f}s)", flush=True)


def compare_before_after(before: Path, after: Path, catalog: str, progress: bool) -> dict:
    """`attrx eval` of both checkpoints on the same test split, side by side (improvement.json)."""
    from attrx.training.evaluation.evaluate import evaluate

    res = {"before": evaluate(before, catalog, out=after / "eval-before", progress=progress),
           "after": evaluate(after, catalog, progress=progress)}
    table = improvement_table(res["before"], res["after"])
    (after / "improvement.json").write_text(json.dumps(table, indent=1))
    _print_improvement(table)
    return table


def improvement_table(before: dict, after: dict, target: str = "0.90") -> dict:
    """Per attribute and situation: accuracy, coverage and precision at `target`, before and after."""
    out = {"target": target, "attributes": {}}
    for a, rb in before["attributes"].items():
        ra = after["attributes"][a]
        rows = {"all": (rb["all"], ra["all"]), **{s: (rb["situations"][s], ra["situations"].get(s))
                                                  for s in rb["situations"]}}
        out["attributes"][a] = {
            where: {"n": b["n"],
                    **{f"{m}_{w}": (g["accepted"][target][m] if m != "accuracy" else g["accuracy"]) if g else None
                       for m in ("accuracy", "coverage", "precision") for w, g in (("before", b), ("after", af))}}
            for where, (b, af) in rows.items()}
    return out


def _print_improvement(table: dict) -> None:
    def f(v):
        return "-" if v is None else f"{v:.3f}"

    print(f"\nbefore -> after on the test split (coverage and precision at P>={table['target']})")
    print(f"{'attribute':<16}{'situation':<16}{'n':>6}  {'accuracy':>15}  {'coverage':>15}  {'precision':>15}")
    for a, rows in table["attributes"].items():
        for where, r in rows.items():
            cells = "  ".join(f"{f(r[m + '_before']):>6} -> {f(r[m + '_after']):<6}" for m in ("accuracy", "coverage",
                                                                                               "precision"))
            print(f"{a:<16}{where:<16}{r['n']:>6}  {cells}")
