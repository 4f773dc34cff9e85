"""`attrx pretrain`: self-supervised pre-training on a catalog, without labels. `--family simla`
runs SIMLA's tasks (training/pretrain_simla.py); `--family momo`, the default, MoMo's three stages:

stage 1  masked image modelling (MIM): 75% of the patches are removed before the encoder (MAE);
         a light decoder reconstructs them; MSE on per-patch normalised pixels.
stage 2  MIM on images and masked language modelling (MLM, 15%) on titles, simultaneously:
         cross-modality gradient accumulation (CMGA) - both losses are back-propagated, then one
         optimizer step is taken.
stage 3  MLM on titles and, on title+image pairs, cross-modal masking (75% of both modalities,
         reconstructed from what is visible in either), a global contrastive loss, and image-text
         matching with hard negatives drawn from the contrastive similarities; again one step
         per iteration with both gradients accumulated.

Each stage has its own decoders (discarded afterwards) and starts from the previous stage's
encoder. Every loss is logged per step (pretrain_log.jsonl) and plotted (pretrain_losses.png).
The output folder holds the encoder (model.safetensors), config.json and tokenizer.json, and is
what `attrx train --family momo|simla --init-from DIR` fine-tunes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from attrx.service.catalog.reader import read_catalog, write_errors
from attrx.service.contract.preprocess import PreprocessConfig, load_tokenizer
from attrx.training.data import tokenizer
from attrx.training.data.encode import encode_catalog, split_of
from attrx.training.models.checkpoint import CONFIG, TOKENIZER, WEIGHTS
from attrx.training.models.factory import create_pretrainer, family, list_families, resolve_config
from attrx.training.models.family import Family
from attrx.training.optim import param_groups
from attrx.training.params import PretrainConfig
from attrx.training.pretrain_simla import prepare_simla, run_simla
from attrx.training.schedule import pretraining_schedule


def cmga_step(opt: torch.optim.Optimizer, losses: list[Callable[[], torch.Tensor]]) -> list[float]:
    """Cross-modality gradient accumulation: back-propagate each modality's loss in turn (so only
    one modality's graph is alive at a time), then take a single optimizer step."""
    opt.zero_grad(set_to_none=True)
    values = []
    for fn in losses:
        loss = fn()
        loss.backward()
        values.append(float(loss.detach()))
    opt.step()
    return values


def _batches(idx: np.ndarray, size: int, rng: np.random.Generator):
    while True:
        perm = rng.permutation(idx)
        for s in range(0, len(perm) - size + 1, size):
            yield perm[s : s + size]


@dataclass
class _Data:
    """The encoded catalog and the rows each objective draws from."""

    arrays: dict[str, torch.Tensor]
    titles: np.ndarray
    images: np.ndarray
    pairs: np.ndarray


def pretrain(cfg: PretrainConfig) -> Path:
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fam = _check_family_flags(cfg)
    mcfg = resolve_config(cfg.config or fam.default_config, cfg.family)
    mcfg, special, pre, data = _prepare(cfg, fam, mcfg, out)
    model = create_pretrainer(mcfg, pre.max_text_len, special)
    model.cfg_mim, model.cfg_mlm, model.cfg_cmm = cfg.mim_ratio, cfg.mlm_ratio, cfg.cmm_ratio
    rng = np.random.default_rng(cfg.seed)
    draws = {k: _batches(getattr(data, k), cfg.batch_size, rng) for k in ("images", "titles", "pairs")}
    model.train()
    with open(out / "pretrain_log.jsonl", "w") as log:
        history = RUNNERS[cfg.family](model, data, draws, gen, cfg, log)
    _plot(history, out / "pretrain_losses.png", fam.title)
    _save(out, fam, model, mcfg, special, pre, cfg, t_start)
    return out


def _run_momo(model, data: _Data, draws: dict, gen, cfg: PretrainConfig, log) -> dict[int, dict[str, list[float]]]:
    """MoMo's three stages, each skipped at 0 steps."""
    history: dict[int, dict[str, list[float]]] = {}
    for stage in (1, 2, 3):
        steps = getattr(cfg, f"stage{stage}_steps")
        if steps:
            history[stage] = _run_stage(stage, steps, model, data, draws, gen, cfg, log)
    return history


def _run_simla(model, data: _Data, draws: dict, gen, cfg: PretrainConfig, log) -> dict[int, dict[str, list[float]]]:
    prepare_simla(model, cfg)
    return {1: run_simla(model, data.arrays, draws["pairs"], gen, cfg, log)}


# the pre-training loop of each family that pre-trains (its model parts are in the registry; its loop
# uses this harness's optimiser and schedule, which models/ may not import)
RUNNERS = {"momo": _run_momo, "simla": _run_simla}


def _check_family_flags(cfg: PretrainConfig) -> Family:
    """The family, if it pre-trains; a flag of another family is an error, not silently ignored."""
    fam = family(cfg.family)
    if fam.pretrainer is None or cfg.family not in RUNNERS:
        raise ValueError(f"--family {cfg.family} has no pre-training; families that pre-train: {', '.join(RUNNERS)}")
    others = [f for other in list_families() if other != cfg.family for f in family(other).pretrain_fields
              if f not in fam.pretrain_fields]

    def given(name: str) -> bool:
        value = getattr(cfg, name)
        return value if isinstance(value, bool) else name in cfg.model_fields_set

    bad = [f"--{f.replace('_', '-')}" for f in dict.fromkeys(others) if given(f)]
    if bad:
        raise ValueError(f"{', '.join(bad)} do{'es' if len(bad) == 1 else ''} not apply to --family {cfg.family}")
    return fam


def _prepare(cfg: PretrainConfig, fam: Family, mcfg, out: Path):
    """A tokenizer trained on the titles, the config fitted to it, and the encoded catalog."""
    cat = read_catalog(cfg.catalog)
    if cfg.split:
        cat.products = [p for p in cat.products if split_of(p.id, cfg.val_frac, cfg.test_frac) == cfg.split]
    titles = [p.title for p in cat.products if p.title]
    if len(titles) < cfg.batch_size:
        raise ValueError(f"{cfg.catalog}: {len(titles)} titles; pre-training needs at least --batch-size of them")
    tok_raw = tokenizer.train_wordpiece(titles, cfg.vocab_size or mcfg.vocab_size)
    tokenizer.save(tok_raw, out / TOKENIZER)
    special = tokenizer.special_ids(tok_raw)
    update = {"vocab_size": tok_raw.get_vocab_size()}
    if "modality_specific_layernorm" in fam.pretrain_fields:
        update["modality_specific_layernorm"] = cfg.modality_specific_layernorm
    if fam.mask_token:
        special["mask_token_id"] = tok_raw.token_to_id("[MASK]")
    mcfg = mcfg.model_copy(update=update)
    pre = PreprocessConfig(**{"image_size": mcfg.image_size, **mcfg.preprocess})
    tok = load_tokenizer(out / TOKENIZER, pre.max_text_len)
    data, errors = encode_catalog(cat, tok, pre, {}, val_frac=cfg.val_frac, test_frac=cfg.test_frac,
                                  progress=cfg.progress)
    write_errors(sorted([*cat.errors, *errors], key=lambda e: e.line), out / "catalog_errors.jsonl")
    a = data.arrays
    has_t, has_i = a["text_present"] > 0, a["image_present"] > 0
    rows = _Data({k: torch.from_numpy(a[k]) for k in ("input_ids", "attention_mask", "pixel_values")},
                 np.flatnonzero(has_t), np.flatnonzero(has_i), np.flatnonzero(has_t & has_i))
    print(f"pre-training on {len(data)} products: {len(rows.titles)} titles, {len(rows.images)} images, "
          f"{len(rows.pairs)} pairs")
    for name, idx in (("images", rows.images), ("titles", rows.titles), ("title+image pairs", rows.pairs)):
        if len(idx) < cfg.batch_size:
            raise ValueError(f"only {len(idx)} {name}; pre-training needs at least --batch-size {cfg.batch_size}")
    return mcfg, special, pre, rows


def _stage_parts(stage: int, model) -> list:
    """The decoders and heads that train beside the encoder in a stage."""
    return {1: [model.s1_img], 2: [model.s2_img, model.s2_txt],
            3: [model.s3_txt, model.s3_cmm, model.s3_cmm_pix, model.itc_proj_t, model.itc_proj_i, model.itm_head]}[stage]


def _stage_losses(stage: int, model, data: _Data, draws: dict, gen) -> tuple[list[Callable], dict, list[str]]:
    """The loss closures of one step (each back-propagated in turn by cmga_step), a dict the
    pair loss fills with its terms, and the names of the closures' values."""
    ids, mask, px = (data.arrays[k] for k in ("input_ids", "attention_mask", "pixel_values"))
    if stage == 1:
        b = next(draws["images"])
        return [lambda: model.mim_loss(px[b], model.s1_img, gen)], {}, ["mim"]
    if stage == 2:
        bi, bt = next(draws["images"]), next(draws["titles"])
        return [lambda: model.mim_loss(px[bi], model.s2_img, gen),
                lambda: model.mlm_loss(ids[bt], mask[bt], model.s2_txt, gen)], {}, ["mim", "mlm"]
    bt, bp, terms = next(draws["titles"]), next(draws["pairs"]), {}

    def pair_loss():
        cmm = model.cmm_loss(ids[bp], mask[bp], px[bp], gen)
        itc, itm = model.itc_itm_losses(ids[bp], mask[bp], px[bp], gen)
        terms.update(cmm=float(cmm.detach()), itc=float(itc.detach()), itm=float(itm.detach()))
        return cmm + itc + itm

    return [lambda: model.mlm_loss(ids[bt], mask[bt], model.s3_txt, gen), pair_loss], terms, ["mlm"]


def _run_stage(stage: int, steps: int, model, data: _Data, draws: dict, gen, cfg: PretrainConfig, log):
    params = [*model.encoder.parameters(), *(p for d in _stage_parts(stage, model) for p in d.parameters())]
    if stage >= 2:
        params.append(model.mlm_bias)
    if stage == 3:
        params.append(model.logit_scale)
    # open_clip's rule, as in attrx train: no decay on biases, norms, embeddings, logit scale
    opt = torch.optim.AdamW(param_groups(model, params, cfg.weight_decay), lr=cfg.lr)
    sched = pretraining_schedule(opt, cfg.lr, steps)
    hist: dict[str, list[float]] = {}
    bar = tqdm(range(steps), desc=f"pretrain stage {stage}", unit="step", disable=None if cfg.progress else True)
    for step in bar:
        losses, terms, names = _stage_losses(stage, model, data, draws, gen)
        vals = cmga_step(opt, losses)
        rec = {**dict(zip(names, vals, strict=False)), **terms}
        sched.step()
        for k, v in rec.items():
            hist.setdefault(k, []).append(v)
        log.write(json.dumps({"stage": stage, "step": step + 1, **{k: round(v, 5) for k, v in rec.items()}}) + "\n")
        bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items()})
    summary = ", ".join(f"{k} {np.mean(v[:5]):.3f} -> {np.mean(v[-5:]):.3f}" for k, v in hist.items())
    print(f"stage {stage}: {steps} steps, {summary}", flush=True)
    return hist


def _save(out: Path, fam: Family, model, mcfg, special: dict, pre: PreprocessConfig, cfg: PretrainConfig,
          t_start: float) -> None:
    # where the encoder sits in the classifier (MoMo's holds it as `encoder`; SIMLA's pre-trainer
    # holds the classifier itself)
    state = {f"{fam.encoder_prefix}{k}": v.detach().contiguous() for k, v in model.encoder.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    spec = {k: v for k, v in special.items() if k != "mask_token_id"}
    (out / CONFIG).write_text(json.dumps({
        "family": cfg.family, "kind": "pretrained-encoder", "model": mcfg.model_dump(), "token_spec": {
            "vocab_size": mcfg.vocab_size, **spec}, "preprocess": pre.model_dump(),
        "pretraining": cfg.model_dump(), "seconds": round(time.time() - t_start, 1)}, indent=2))
    print(f"pre-trained encoder written to {out} ({time.time() - t_start:.0f}s); fine-tune with "
          f"attrx train --family {cfg.family} --init-from {out} ...")


def _plot(history: dict[int, dict[str, list[float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = sorted(history)
    if not stages:
        return
    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3.6), dpi=100, squeeze=False)
    for ax, st in zip(axes[0], stages, strict=True):
        for name, vals in history[st].items():
            v = np.asarray(vals)
            k = max(1, len(v) // 20)
            smooth = np.convolve(v, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(len(smooth)) + k, smooth, label=name)
        ax.set_title(f"stage {st}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
    fig.suptitle(f"{title} pre-training losses (moving average)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
