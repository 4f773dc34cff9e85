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
import copy
import io
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from attrx.service.catalog.reader import read_catalog, write_errors
from attrx.service.contract.preprocess import CLIP_MEAN, CLIP_STD, PreprocessConfig, load_tokenizer
from attrx.training import tokenizer
from attrx.training.augment import TitleSilencer, augment_images
from attrx.training.checkpoint import TOKENIZER, save_checkpoint, torch_inputs
from attrx.training.data import IGNORE, Encoded, encode_catalog, encode_catalog_on_disk, label_maps, split_of
from attrx.training.device import Compute
from attrx.training.device import resolve as resolve_compute
from attrx.training.distributed import Dist
from attrx.training.distributed import setup as setup_distributed
from attrx.training.loader import batches
from attrx.training.models.cma_clip import CMAClip, load_config

STAGES = ("warmup", "e2e", "tune")


class TrainConfig(BaseModel):
    """Every knob of a training run; written to the checkpoint's config.json."""

    model_config = ConfigDict(extra="forbid")
    catalog: str
    attributes: list[str] = Field(min_length=1)
    out: str
    config: str = "tiny"
    family: str | None = Field(None, pattern="^(cma-clip|momo)$")
    init_from: str | None = None
    tokenizer: str | None = None
    vocab_size: int | None = None
    warmup_epochs: int = Field(2, ge=0)
    warmup_lr: float = 1e-3
    e2e_epochs: int = Field(10, ge=0)
    e2e_lr: float = 5e-4
    tune_epochs: int = Field(2, ge=0)
    tune_lr: float = 5e-4
    batch_size: int = Field(32, ge=1)
    min_class_count: int = Field(0, ge=0, description="labels with fewer training examples fold into 'other'")
    weight_decay: float = 1e-4
    modality_dropout: float = Field(0.1, ge=0.0, le=1.0)
    # teach a multimodal model that a present title can be silent: per item and attribute, with this
    # probability, the words naming that attribute's labels are removed from the training title
    silence_title: float = Field(0.3, ge=0.0, le=1.0)
    # unimodal auxiliary heads on the title tower and the image tower (Gradient-Blending); 0 turns them off
    aux_loss_weight: float = Field(0.5, ge=0.0)
    modality_weights: str = Field("evidence", pattern="^(paper|evidence)$")
    augment_images: bool = True
    patience: int = Field(5, ge=0, description="end a stage after this many epochs without a better val loss (0: never)")
    no_mwa: bool = False
    no_swa: bool = False
    fusion: str = Field("mwa", pattern="^(mwa|tirg)$")
    inputs: str = Field("both", pattern="^(both|text|image)$")
    lock_image: bool = False
    modality_specific_layernorm: bool = False
    val_frac: float = Field(0.1, gt=0.0, lt=0.5)
    test_frac: float = Field(0.1, ge=0.0, lt=0.5)
    seed: int = 0
    threads: int | None = None
    # data: decoded images in a disk store read per batch (memory does not grow with the catalog),
    # kept across runs in image_cache; in_memory holds every decoded image in RAM instead
    in_memory: bool = False
    image_cache: str | None = None
    workers: int | None = Field(None, ge=0, description="DataLoader and decoding worker processes (default cores - 1)")
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")
    precision: str = Field("fp32", pattern="^(fp32|bf16|fp16)$")
    progress: bool = True


def _pretrained_preprocess(init_from: Path, image_size: int, max_len: int) -> PreprocessConfig:
    mean, std = CLIP_MEAN, CLIP_STD
    pp = init_from / "preprocessor_config.json"
    if pp.is_file():
        d = json.loads(pp.read_text())
        mean, std = tuple(d.get("image_mean", mean)), tuple(d.get("image_std", std))
    return PreprocessConfig(image_size=image_size, image_mean=mean, image_std=std, max_text_len=max_len)


def resolve_config(cfg: TrainConfig):
    """The model config named by --config, checked against --family (momo defaults to momo-tiny)."""
    name = cfg.config
    if cfg.family == "momo" and name == "tiny":
        name = "momo-tiny"
    mcfg = load_config(name)
    if cfg.family and mcfg.family != cfg.family:
        raise ValueError(f"--config {name} is a {mcfg.family} config but --family is {cfg.family}")
    return mcfg


def build_model(cfg: TrainConfig, n_classes: list[int], special: dict[str, int], vocab: int):
    mcfg = resolve_config(cfg)
    if mcfg.family == "momo":
        from attrx.training.models.momo import MoMoClassifier

        if cfg.no_swa:
            raise ValueError("--no-swa is a CMA-CLIP ablation; MoMo's shared encoder always attends across modalities")
        update = {"use_mwa": not cfg.no_mwa, "head_fusion": cfg.fusion, "inputs": cfg.inputs}
        if cfg.init_from:  # a folder written by `attrx pretrain --family momo`
            from safetensors.torch import load_file

            from attrx.training.models.momo import MoMoConfig

            src = json.loads((Path(cfg.init_from) / "config.json").read_text())
            if src.get("kind") != "pretrained-encoder" or src.get("family") != "momo":
                raise ValueError(f"--init-from {cfg.init_from}: not a MoMo pre-training folder (made by attrx pretrain)")
            mcfg = MoMoConfig.model_validate(src["model"]).model_copy(update=update)
            model = MoMoClassifier(mcfg, n_classes, **special)
            missing, unexpected = model.load_state_dict(load_file(str(Path(cfg.init_from) / "model.safetensors")),
                                                        strict=False)
            if unexpected or any(not k.startswith("heads.") for k in missing):
                raise ValueError(f"--init-from {cfg.init_from}: encoder weights do not fit "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
            return model, PreprocessConfig.model_validate(src["preprocess"])
        update.update(vocab_size=vocab, modality_specific_layernorm=cfg.modality_specific_layernorm)
        mcfg = mcfg.model_copy(update=update)
        pre = PreprocessConfig(**{"image_size": mcfg.image_size, **mcfg.preprocess})
        return MoMoClassifier(mcfg, n_classes, **special), pre
    if cfg.modality_specific_layernorm:
        raise ValueError("--modality-specific-layernorm applies to MoMo's shared encoder (--family momo)")
    mcfg = mcfg.model_copy(update={"use_swa": not cfg.no_swa, "use_mwa": not cfg.no_mwa, "head_fusion": cfg.fusion,
                                   "inputs": cfg.inputs, "modality_weights": cfg.modality_weights,
                                   "aux_heads": cfg.aux_loss_weight > 0 and cfg.inputs == "both",
                                   "text_sequence": "tokens"})
    if cfg.init_from:
        return _from_pretrained_clip(Path(cfg.init_from), mcfg, n_classes)
    mcfg = mcfg.model_copy(update={"vocab_size": vocab})
    pre = PreprocessConfig(**mcfg.preprocess)
    return CMAClip(mcfg, n_classes, **special), pre


def _clip_projections(src: Path) -> dict[str, torch.Tensor]:
    """CLIP's `text_projection` and `visual_projection` weights from a saved CLIPModel folder
    ({} when the folder holds none, e.g. a bare CLIPTextModel)."""
    from safetensors import safe_open

    files = sorted(src.glob("*.safetensors"))
    want = {"text_projection.weight", "visual_projection.weight"}
    found = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            found.update({k: sf.get_tensor(k) for k in want & set(sf.keys())})
    if not files and (src / "pytorch_model.bin").is_file():
        state = torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
        found = {k: state[k] for k in want if k in state}
    return found


def _from_pretrained_clip(src: Path, mcfg, n_classes: list[int]):
    """CMA-CLIP on a local Hugging Face CLIP folder: its towers, and T' and I' starting from CLIP's
    own projections into the joint space (so the fusion width is CLIP's projection_dim)."""
    from transformers import CLIPTextModel, CLIPVisionModel
    from transformers.utils import logging as hf_logging

    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"--init-from {src}: no config.json; point it to a local Hugging Face CLIP folder")
    hf_logging.set_verbosity_error()  # a full CLIP folder holds both towers: each load skips the other's keys
    tm = CLIPTextModel.from_pretrained(src)
    vm = CLIPVisionModel.from_pretrained(src)
    proj = _clip_projections(src)
    max_len = min(int(mcfg.preprocess.get("max_text_len", 77)), tm.config.max_position_embeddings)
    update = {"preprocess": {**mcfg.preprocess, "max_text_len": max_len, "image_size": vm.config.image_size}}
    if len(proj) == 2:
        width = proj["text_projection.weight"].shape[0]
        if width % mcfg.fusion.num_heads:
            raise ValueError(f"--init-from {src}: CLIP's projection_dim {width} is not divisible by the config's "
                             f"{mcfg.fusion.num_heads} fusion heads")
        update["fusion"] = mcfg.fusion.model_copy(update={"width": width})
    else:
        print(f"--init-from {src}: no text_projection/visual_projection weights (not a saved CLIPModel); the "
              "projections into the fusion width start at random", flush=True)
    mcfg = mcfg.model_copy(update=update)
    model = CMAClip(mcfg, n_classes, text_model=tm, vision_model=vm)
    if len(proj) == 2:
        with torch.no_grad():
            for lin, key in ((model.proj_t, "text_projection.weight"), (model.proj_v, "visual_projection.weight")):
                lin.weight.copy_(proj[key])
                lin.bias.zero_()
    return model, _pretrained_preprocess(src, vm.config.image_size, max_len)


def _ce(logits: list[torch.Tensor], labels: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over tasks of the cross-entropy on labelled items (and, with rows, only those rows)."""
    total = labels.new_zeros((), dtype=torch.float32)
    for j, lg in enumerate(logits):
        ok = labels[:, j] >= 0
        if rows is not None:
            ok = ok & rows
        if ok.any():
            total = total + F.cross_entropy(lg[ok], labels[ok, j])
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


def _loss(outputs, batch: dict[str, torch.Tensor], labels: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """The fused heads' loss, plus the unimodal auxiliary heads' (each on the items that have
    that modality) weighted by aux_weight."""
    fused, aux_t, aux_i = outputs
    loss = _ce([lg for lg, _ in fused], labels)
    if aux_t and aux_weight > 0:
        loss = loss + aux_weight * (_ce(aux_t, labels, batch["text_present"] > 0)
                                    + _ce(aux_i, labels, batch["image_present"] > 0))
    return loss


def _modality_dropout(batch: dict[str, torch.Tensor], p: float, gen: torch.Generator) -> None:
    """Hide the title or the image (never both) of a random fraction p of the batch, in place."""
    if p <= 0:
        return
    tp, ip = batch["text_present"], batch["image_present"]
    both = (tp > 0) & (ip > 0)
    drop = (torch.rand(tp.shape, generator=gen) < p) & both
    hide_text = drop & (torch.rand(tp.shape, generator=gen) < 0.5)
    tp[hide_text] = 0.0
    ip[drop & ~hide_text] = 0.0


@torch.no_grad()
def predict(model: CMAClip, data: Encoded, idx: np.ndarray, batch_size: int = 256):
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


def _validate(model, data: Encoded, idx: np.ndarray, dist: Dist | None = None) -> tuple[float, list[float | None]]:
    """Validation loss (sum over attributes of the mean NLL) and per-attribute accuracy. Under
    torchrun each rank scores a disjoint share and the sums are all-reduced: exact, no duplicates."""
    dist = dist or Dist()
    share = dist.shard(idx)
    probs, _ = predict(model, data, share)
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


def _trainable(model: CMAClip, stage: str, lock_image: bool = False) -> list[torch.nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(stage == "e2e")
    if stage == "warmup":
        tower = {id(p) for p in model.tower_parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) not in tower)
    elif stage == "tune":
        for p in model.head_parameters():
            p.requires_grad_(True)
    if lock_image:  # locked-image tuning: the image tower never trains
        for p in model.image_tower_parameters():
            p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def param_groups(model: torch.nn.Module, params: list, weight_decay: float) -> list[dict]:
    """open_clip's rule: no weight decay on biases, norms, gains, embeddings (token, position,
    type), [CLS] tokens or the modality vectors `w`."""
    wanted = {id(p) for p in params}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if id(p) not in wanted:
            continue
        leaf = name.rsplit(".", 1)[-1]
        plain = p.ndim < 2 or "embedding" in name or leaf in ("w", "cls", "type_emb") or leaf.endswith("_pos")
        (no_decay if plain else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _schedule(steps: int):
    warm = max(1, int(0.05 * steps))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    return f


def default_threads() -> int:
    """The cores this process may use (its CPU affinity), at least 1."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@dataclass
class Prepared:
    """What a run trains on: the encoded catalog, its splits, the model and the tokenizer."""

    model: torch.nn.Module
    pre: PreprocessConfig
    tok: object
    tok_file: Path
    data: Encoded
    classes: dict[str, list[str]]
    label_words: dict[str, list[str]]
    other_for: list[str]
    tr: np.ndarray
    va: np.ndarray
    errors: list


def _tokenizer(cfg: TrainConfig, out: Path, train_titles: list[str | None], dist: Dist):
    """Given, the pretrained CLIP's, or a WordPiece trained on the training titles (by rank 0;
    the other ranks read the file it writes)."""
    tok_file = out / TOKENIZER
    if not dist.main:
        dist.barrier()
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(tok_file)), tok_file
    try:
        return _make_tokenizer(cfg, tok_file, train_titles)
    finally:
        dist.barrier()


def _make_tokenizer(cfg: TrainConfig, tok_file: Path, train_titles: list[str | None]):
    src_tok = cfg.tokenizer or (str(Path(cfg.init_from) / TOKENIZER) if cfg.init_from else None)
    if src_tok:
        if not Path(src_tok).is_file():
            raise FileNotFoundError(f"tokenizer {src_tok} not found")
        tok_file.write_bytes(Path(src_tok).read_bytes())
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(tok_file)), tok_file
    raw = tokenizer.train_wordpiece(train_titles, cfg.vocab_size or resolve_config(cfg).vocab_size)
    tokenizer.save(raw, tok_file)
    return raw, tok_file


def _encode(cfg: TrainConfig, catalog, tok, pre, classes, other_for, out: Path, dist: Dist):
    """The catalog's model inputs: in memory, or with the images in a disk store (rank 0 decodes;
    under torchrun the others then read its store, through a cache in the output folder)."""
    split = {"val_frac": cfg.val_frac, "test_frac": cfg.test_frac, "other_for": other_for}
    if cfg.in_memory:
        return encode_catalog(catalog, tok, pre, classes, progress=cfg.progress and dist.main, **split)[:2]
    cache = cfg.image_cache or (str(out / ".image-cache") if dist.on else None)
    opts = {"catalog_file": Path(cfg.catalog), "scratch": out, "cache_dir": cache, "workers": data_workers(cfg),
            "progress": cfg.progress and dist.main, **split}
    if not dist.main:
        dist.barrier()
    data, errors, warm = encode_catalog_on_disk(catalog, tok, pre, classes, **opts)
    if dist.main:
        dist.barrier()
        if warm:
            print(f"decoded images: warm cache in {cache}", flush=True)
    return data, errors


def data_workers(cfg: TrainConfig) -> int:
    return cfg.workers if cfg.workers is not None else max(0, default_threads() - 1)


def prepare(cfg: TrainConfig, out: Path, dist: Dist | None = None) -> tuple[Prepared, TrainConfig]:
    dist = dist or Dist()
    attrs = tuple(cfg.attributes)
    catalog = read_catalog(cfg.catalog, attrs, require_labels=True)
    train_products = [p for p in catalog.products if split_of(p.id, cfg.val_frac, cfg.test_frac) == "train"]
    if not train_products:
        raise ValueError(f"{cfg.catalog}: no usable product in the training split")
    classes = label_maps(train_products, attrs, cfg.min_class_count)
    other_for = [a for a in attrs if cfg.min_class_count and classes[a][-1] == "other"]
    # every label seen in training names its attribute, folded ones included
    label_words = {a: sorted({p.labels[a] for p in train_products if p.labels.get(a)} - {"other"}) for a in attrs}
    raw_tok, tok_file = _tokenizer(cfg, out, [p.title for p in train_products], dist)
    model, pre = build_model(cfg, [len(classes[a]) for a in attrs], tokenizer.special_ids(raw_tok),
                             raw_tok.get_vocab_size())
    tok = load_tokenizer(tok_file, pre.max_text_len)
    data, img_errors = _encode(cfg, catalog, tok, pre, classes, other_for, out, dist)
    errors = sorted([*catalog.errors, *img_errors], key=lambda e: e.line)
    if dist.main:
        write_errors(errors, out / "catalog_errors.jsonl")
    tr, va = data.indices("train"), data.indices("val")
    if cfg.inputs != "both":  # single-modality baseline: train only on items that have that modality
        present = data.arrays["text_present" if cfg.inputs == "text" else "image_present"] > 0
        tr = tr[present[tr]]
        off = {k: 0.0 for k in ("modality_dropout", "silence_title") if getattr(cfg, k)}
        if off:
            print(f"--inputs {cfg.inputs}: {', '.join(off)} do not apply and are off")
            cfg = cfg.model_copy(update=off)
    print(f"catalog: {len(data)} products used ({len(tr)} train, {len(va)} val, {len(data.indices('test'))} test), "
          f"{len(errors)} rows skipped" + (f" (reasons in {out / 'catalog_errors.jsonl'})" if errors else ""))
    if len(va) == 0:
        raise ValueError("the validation split is empty; use a larger catalog or a larger --val-frac")
    return Prepared(model, pre, tok, tok_file, data, classes, label_words, other_for, tr, va, errors), cfg


class _Best:
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
    gen: torch.Generator  # modality dropout and augmentation (seeded per rank)
    silencer: TitleSilencer | None
    log: object
    epochs_done: int = 0


def _train_epoch(r: Run, fwd, params, opt, sched, stage: str, desc: str) -> float:
    model, run, cfg, compute = r.model, r.data, r.cfg, r.compute
    model.train()
    if stage != "e2e":  # frozen towers stay in eval mode
        for m in model.tower_modules():
            m.eval()
    order = run.tr[r.dist.train_order(len(run.tr), r.epochs_done, cfg.seed)]
    per_rank = max(1, cfg.batch_size // r.dist.world)  # --batch-size is the global batch
    total, n = 0.0, 0
    bar = tqdm(total=len(order), desc=desc, unit="item", leave=False, disable=None if cfg.progress else True)
    for idx, batch, labels in batches(run.data, order, per_rank, workers=data_workers(cfg), pin=compute.cuda):
        if r.silencer is not None:
            r.silencer([run.data.products[i].title for i in idx], batch)
        _modality_dropout(batch, cfg.modality_dropout, r.gen)
        if cfg.augment_images:
            batch["pixel_values"] = augment_images(batch["pixel_values"], batch["image_present"], r.gen)
        batch, labels = compute.to_device(batch), compute.move(labels)
        with compute.autocast():
            loss = _loss(fwd(**batch), batch, labels, cfg.aux_loss_weight)
        opt.zero_grad(set_to_none=True)
        compute.step(loss, opt, params)
        sched.step()
        total += float(loss.detach()) * len(idx)
        n += len(idx)
        bar.update(len(idx))
        bar.set_postfix(loss=f"{total / n:.3f}")
    bar.close()
    r.epochs_done += 1
    total, n = r.dist.sum(np.array([total, n]))  # the mean over every rank's items
    return float(total / max(1, n))


def _run_stage(stage: str, r: Run, best: _Best) -> None:
    """One stage from the best weights so far; stops early after `patience` epochs without a
    better validation loss."""
    model, run, cfg = r.model, r.data, r.cfg
    epochs, lr = getattr(cfg, f"{stage}_epochs"), getattr(cfg, f"{stage}_lr")
    if best.state is not None:
        model.load_state_dict(best.state)
    params = _trainable(model, stage, cfg.lock_image)
    fwd = r.dist.wrap(TrainForward(model))  # per stage: DDP registers the parameters that train now
    opt = torch.optim.AdamW(param_groups(model, params, cfg.weight_decay), lr=lr, foreach=True)
    steps = epochs * math.ceil(len(run.tr) / r.dist.world / max(1, cfg.batch_size // r.dist.world))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(steps))
    attrs, stale = list(run.classes), 0
    for epoch in range(1, epochs + 1):
        t0 = time.time()
        train_loss = _train_epoch(r, fwd, params, opt, sched, stage, f"{stage} {epoch}/{epochs}")
        val_loss, val_acc = _validate(model, run.data, run.va, r.dist)
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


def train(cfg: TrainConfig) -> Path:
    """Train in this process, or as one rank of a torchrun group (rank 0 writes everything)."""
    compute = resolve_compute(cfg.device, cfg.precision)
    dist = setup_distributed(compute.device)
    try:
        quiet = contextlib.nullcontext() if dist.main else contextlib.redirect_stdout(io.StringIO())
        with quiet:
            return _train(cfg, compute, dist)
    finally:
        dist.close()


def _train(cfg: TrainConfig, compute: Compute, dist: Dist) -> Path:
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
    silencer = TitleSilencer(run.label_words, cfg.silence_title, run.tok, cfg.seed + dist.rank) \
        if cfg.silence_title else None
    best = _Best()
    with open(out / "train_log.jsonl", "w") if dist.main else contextlib.nullcontext() as log:
        r = Run(model, run, cfg, compute, dist, torch.Generator().manual_seed(cfg.seed + dist.rank), silencer, log)
        for stage in STAGES:
            if getattr(cfg, f"{stage}_epochs"):
                _run_stage(stage, r, best)
    model.load_state_dict(best.state)
    model = model.to("cpu")  # the checkpoint and the calibration are device-free
    print(f"best validation loss {best.loss:.4f} ({best.where}): these weights are the checkpoint", flush=True)
    if dist.main:
        _save(out, model, run, cfg, best, t_start)
    _clean_scratch(out, cfg, dist)
    return out


def _save(out: Path, model, run: Prepared, cfg: TrainConfig, best: _Best, t_start: float) -> None:
    meta = {"training": cfg.model_dump(), "split": {"val_frac": cfg.val_frac, "test_frac": cfg.test_frac},
            "other_for": run.other_for, "label_words": run.label_words, "best": best.where,
            "train_seconds": round(time.time() - t_start, 1),
            "counts": {"train": len(run.tr), "val": len(run.va), "test": len(run.data.indices("test")),
                       "skipped": len(run.errors)}}
    save_checkpoint(out, model, run.classes, run.pre, run.tok_file, meta)
    from attrx.training.calibration import calibrate_checkpoint

    calibrate_checkpoint(out, model, run.data, run.va, run.classes)
    print(f"checkpoint written to {out}, thresholds calibrated on the validation split ({meta['train_seconds']:.0f}s)")


def _clean_scratch(out: Path, cfg: TrainConfig, dist: Dist) -> None:
    """The decoded-image file of a run without --image-cache goes; a cache the user named stays."""
    dist.barrier()
    if dist.main:
        (out / ".images.f32").unlink(missing_ok=True)
        if not cfg.image_cache:
            shutil.rmtree(out / ".image-cache", ignore_errors=True)
