"""`attrx pretrain --family momo`: MoMo's three pre-training stages on a catalog, without labels.

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
what `attrx train --family momo --init-from DIR` fine-tunes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from attrx.service.catalog.reader import read_catalog, write_errors
from attrx.service.contract.preprocess import PreprocessConfig, load_tokenizer
from attrx.training import tokenizer
from attrx.training.checkpoint import CONFIG, TOKENIZER, WEIGHTS
from attrx.training.data import encode_catalog, split_of
from attrx.training.models.cma_clip import load_config
from attrx.training.models.momo import (
    IMAGE,
    TEXT,
    MAEDecoder,
    MoMoConfig,
    SharedEncoder,
    patchify,
    visible_tokens,
)
from attrx.training.train import param_groups


class PretrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    catalog: str
    out: str
    family: str = Field("momo", pattern="^momo$")
    config: str = "momo-tiny"
    split: str | None = Field(None, pattern="^(train|val|test)$", description="use only this id-hash split")
    val_frac: float = 0.1
    test_frac: float = 0.1
    stage1_steps: int = Field(100, ge=0)
    stage2_steps: int = Field(100, ge=0)
    stage3_steps: int = Field(100, ge=0)
    batch_size: int = Field(32, ge=2)
    lr: float = 1e-3
    weight_decay: float = 0.05
    mim_ratio: float = Field(0.75, gt=0, lt=1)
    mlm_ratio: float = Field(0.15, gt=0, lt=1)
    cmm_ratio: float = Field(0.75, gt=0, lt=1)
    vocab_size: int | None = None
    modality_specific_layernorm: bool = False
    seed: int = 0
    threads: int | None = None
    progress: bool = True


class Pretrainer(nn.Module):
    """The shared encoder plus every stage's decoders and heads."""

    def __init__(self, cfg: MoMoConfig, max_len: int, special: dict[str, int]):
        super().__init__()
        self.cfg, self.max_len, self.special = cfg, max_len, special
        self.encoder = SharedEncoder(cfg, max_len, special["pad_token_id"])
        d, p = cfg.width, cfg.patch_size
        n, pix = self.encoder.n_patches, p * p * 3

        def dec(seq, out):
            return MAEDecoder(d, cfg.decoder_width, cfg.decoder_layers, cfg.decoder_heads, seq, out)

        # separate decoders per stage (the paper found sharing them slightly worse)
        self.s1_img = dec(n, pix)
        self.s2_img, self.s2_txt = dec(n, pix), dec(max_len, d)
        self.s3_txt, self.s3_cmm = dec(max_len, d), dec(max_len + n, d)
        self.s3_cmm_pix = nn.Linear(d, pix)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.itc_proj_t, self.itc_proj_i = nn.Linear(d, d), nn.Linear(d, d)
        self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
        self.itm_head = nn.Linear(d, 2)

    # -- pieces ------------------------------------------------------------------------------------
    def mlm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Tied MLM output: the token embedding matrix is the output projection."""
        return h @ self.encoder.tok_embed.weight.T + self.mlm_bias

    def pixel_target(self, pixels: torch.Tensor) -> torch.Tensor:
        t = patchify(pixels, self.cfg.patch_size)
        mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
        return (t - mean) / (var + 1e-6).sqrt()  # MAE's normalised pixels

    def random_visible(self, b: int, n: int, ratio: float, gen: torch.Generator) -> torch.Tensor:
        keep_n = max(1, round(n * (1 - ratio)))
        order = torch.rand(b, n, generator=gen).argsort(1)
        visible = torch.zeros(b, n, dtype=torch.bool)
        visible.scatter_(1, order[:, :keep_n], True)
        return visible

    def text_mask(self, ids: torch.Tensor, mask: torch.Tensor, ratio: float, gen: torch.Generator) -> torch.Tensor:
        """Which title tokens to mask: real, non-special tokens, `ratio` of them, at least one per title."""
        sp = self.special
        cand = mask.bool() & (ids != sp["bos_token_id"]) & (ids != sp["eos_token_id"]) & (ids != sp["pad_token_id"])
        masked = cand & (torch.rand(ids.shape, generator=gen) < ratio)
        need = cand.any(1) & ~masked.any(1)
        if need.any():  # force one masked token where the draw masked none
            noise = torch.rand(ids.shape, generator=gen) * cand
            masked[need, noise[need].argmax(1)] = True
        return masked

    # -- losses ------------------------------------------------------------------------------------
    def mim_loss(self, pixels, decoder: MAEDecoder, gen) -> torch.Tensor:
        v = self.encoder.embed_image(pixels)
        visible = self.random_visible(v.shape[0], v.shape[1], self.cfg_mim, gen)
        x, keep, idx = visible_tokens(v, visible)
        h = self.encoder(x, keep, torch.full(keep.shape, IMAGE))[:, 1:]
        pred = decoder(h, idx, keep, v.shape[1])
        err = ((pred - self.pixel_target(pixels)) ** 2).mean(-1)
        return err[~visible].mean()

    def mlm_loss(self, ids, mask, decoder: MAEDecoder, gen) -> torch.Tensor:
        masked = self.text_mask(ids, mask, self.cfg_mlm, gen)
        visible = mask.bool() & ~masked
        x, keep, idx = visible_tokens(self.encoder.embed_text(ids), visible)
        h = self.encoder(x, keep, torch.full(keep.shape, TEXT))[:, 1:]
        logits = self.mlm_logits(decoder(h, idx, keep, ids.shape[1]))
        return F.cross_entropy(logits[masked], ids[masked])

    def cmm_loss(self, ids, mask, pixels, gen) -> torch.Tensor:
        """Cross-modal masking: 75% of title tokens and of patches hidden, rebuilt from the rest of both."""
        t, v = self.encoder.embed_text(ids), self.encoder.embed_image(pixels)
        t_masked = self.text_mask(ids, mask, self.cfg_cmm, gen)
        v_visible = self.random_visible(v.shape[0], v.shape[1], self.cfg_cmm, gen)
        visible = torch.cat([mask.bool() & ~t_masked, v_visible], 1)
        modality = torch.cat([torch.full(ids.shape, TEXT), torch.full(v.shape[:2], IMAGE)], 1)
        x, keep, idx = visible_tokens(torch.cat([t, v], 1), visible)
        h = self.encoder(x, keep, torch.gather(modality, 1, idx))[:, 1:]
        out = self.s3_cmm(h, idx, keep, visible.shape[1])
        lt = ids.shape[1]
        text_loss = F.cross_entropy(self.mlm_logits(out[:, :lt][t_masked]), ids[t_masked])
        pix = self.s3_cmm_pix(out[:, lt:])
        img_loss = ((pix - self.pixel_target(pixels)) ** 2).mean(-1)[~v_visible].mean()
        return text_loss + img_loss

    def unimodal_cls(self, ids=None, mask=None, pixels=None) -> torch.Tensor:
        if ids is not None:
            t = self.encoder.embed_text(ids)
            return self.encoder(t, mask.bool(), torch.full(ids.shape, TEXT))[:, 0]
        v = self.encoder.embed_image(pixels)
        return self.encoder(v, torch.ones(v.shape[:2], dtype=torch.bool), torch.full(v.shape[:2], IMAGE))[:, 0]

    def joint_cls(self, ids, mask, pixels) -> torch.Tensor:
        t, v = self.encoder.embed_text(ids), self.encoder.embed_image(pixels)
        keep = torch.cat([mask.bool(), torch.ones(v.shape[:2], dtype=torch.bool)], 1)
        modality = torch.cat([torch.full(ids.shape, TEXT), torch.full(v.shape[:2], IMAGE)], 1)
        return self.encoder(torch.cat([t, v], 1), keep, modality)[:, 0]

    def itc_itm_losses(self, ids, mask, pixels, gen) -> tuple[torch.Tensor, torch.Tensor]:
        b = ids.shape[0]
        zt = F.normalize(self.itc_proj_t(self.unimodal_cls(ids, mask)), dim=-1)
        zi = F.normalize(self.itc_proj_i(self.unimodal_cls(pixels=pixels)), dim=-1)
        sim = self.logit_scale.exp().clamp(max=100) * zt @ zi.T
        target = torch.arange(b)
        itc = (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)) / 2
        # hard negatives: for each title an image (and for each image a title) drawn in proportion
        # to its contrastive similarity, never the true partner
        with torch.no_grad():
            w = F.softmax(sim.detach().float(), dim=1).fill_diagonal_(0) + 1e-9
            neg_img = torch.multinomial(w, 1, generator=gen)[:, 0]
            neg_txt = torch.multinomial(w.T.contiguous(), 1, generator=gen)[:, 0]
        cls = self.joint_cls(torch.cat([ids, ids, ids[neg_txt]]), torch.cat([mask, mask, mask[neg_txt]]),
                             torch.cat([pixels, pixels[neg_img], pixels]))
        labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long()
        itm = F.cross_entropy(self.itm_head(cls), labels)
        return itc, itm


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


def pretrain(cfg: PretrainConfig) -> Path:
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    mcfg = load_config(cfg.config)
    if not isinstance(mcfg, MoMoConfig):
        raise ValueError(f"--config {cfg.config} is not a MoMo config")

    cat = read_catalog(cfg.catalog)
    if cfg.split:
        cat.products = [p for p in cat.products if split_of(p.id, cfg.val_frac, cfg.test_frac) == cfg.split]
    titles = [p.title for p in cat.products if p.title]
    if len(titles) < cfg.batch_size:
        raise ValueError(f"{cfg.catalog}: {len(titles)} titles; pre-training needs at least --batch-size of them")
    tok_raw = tokenizer.train_wordpiece(titles, cfg.vocab_size or mcfg.vocab_size)
    tokenizer.save(tok_raw, out / TOKENIZER)
    special = tokenizer.special_ids(tok_raw)
    mcfg = mcfg.model_copy(update={"vocab_size": tok_raw.get_vocab_size(),
                                   "modality_specific_layernorm": cfg.modality_specific_layernorm})
    pre = PreprocessConfig(**{"image_size": mcfg.image_size, **mcfg.preprocess})
    tok = load_tokenizer(out / TOKENIZER, pre.max_text_len)
    data, errors = encode_catalog(cat, tok, pre, {}, val_frac=cfg.val_frac, test_frac=cfg.test_frac,
                                  progress=cfg.progress)
    write_errors(sorted([*cat.errors, *errors], key=lambda e: e.line), out / "catalog_errors.jsonl")
    a = data.arrays
    has_t, has_i = a["text_present"] > 0, a["image_present"] > 0
    idx_t, idx_i, idx_pair = np.flatnonzero(has_t), np.flatnonzero(has_i), np.flatnonzero(has_t & has_i)
    print(f"pre-training on {len(data)} products: {len(idx_t)} titles, {len(idx_i)} images, {len(idx_pair)} pairs")
    for name, idx in (("images", idx_i), ("titles", idx_t), ("title+image pairs", idx_pair)):
        if len(idx) < cfg.batch_size:
            raise ValueError(f"only {len(idx)} {name}; pre-training needs at least --batch-size {cfg.batch_size}")

    model = Pretrainer(mcfg, pre.max_text_len, special)
    model.cfg_mim, model.cfg_mlm, model.cfg_cmm = cfg.mim_ratio, cfg.mlm_ratio, cfg.cmm_ratio
    ids_all, mask_all, px_all = (torch.from_numpy(a[k]) for k in ("input_ids", "attention_mask", "pixel_values"))
    it_i, it_t, it_p = (_batches(x, cfg.batch_size, rng) for x in (idx_i, idx_t, idx_pair))

    def px(b):
        return px_all[b]

    def txt(b):
        return ids_all[b], mask_all[b]

    stages = {
        1: (cfg.stage1_steps, [model.s1_img], lambda: {"mim": lambda b=next(it_i): model.mim_loss(px(b), model.s1_img, gen)}),
        2: (cfg.stage2_steps, [model.s2_img, model.s2_txt], lambda: {
            "mim": lambda b=next(it_i): model.mim_loss(px(b), model.s2_img, gen),
            "mlm": lambda b=next(it_t): model.mlm_loss(*txt(b), model.s2_txt, gen)}),
        3: (cfg.stage3_steps, [model.s3_txt, model.s3_cmm, model.s3_cmm_pix, model.itc_proj_t, model.itc_proj_i,
                               model.itm_head], None),
    }
    log = open(out / "pretrain_log.jsonl", "w")
    history: dict[int, dict[str, list[float]]] = {}
    model.train()
    for stage, (steps, decoders, make_losses) in stages.items():
        if steps == 0:
            continue
        params = [*model.encoder.parameters(), *(p for d in decoders for p in d.parameters())]
        if stage >= 2:
            params.append(model.mlm_bias)
        if stage == 3:
            params.append(model.logit_scale)
        # open_clip's rule, as in attrx train: no decay on biases, norms, embeddings, logit scale
        opt = torch.optim.AdamW(param_groups(model, params, cfg.weight_decay), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
        hist = history.setdefault(stage, {})
        bar = tqdm(range(steps), desc=f"pretrain stage {stage}", unit="step", disable=None if cfg.progress else True)
        for step in bar:
            if stage == 3:
                bt, bp = next(it_t), next(it_p)
                pair_terms: dict[str, float] = {}

                def pair_loss(bp=bp, pair_terms=pair_terms):
                    ids, mask = txt(bp)
                    cmm = model.cmm_loss(ids, mask, px(bp), gen)
                    itc, itm = model.itc_itm_losses(ids, mask, px(bp), gen)
                    pair_terms.update(cmm=float(cmm.detach()), itc=float(itc.detach()), itm=float(itm.detach()))
                    return cmm + itc + itm

                vals = cmga_step(opt, [lambda bt=bt: model.mlm_loss(*txt(bt), model.s3_txt, gen), pair_loss])
                rec = {"mlm": vals[0], **pair_terms}
            else:
                fns = make_losses()
                vals = cmga_step(opt, list(fns.values()))
                rec = dict(zip(fns, vals, strict=True))
            sched.step()
            for k, v in rec.items():
                hist.setdefault(k, []).append(v)
            log.write(json.dumps({"stage": stage, "step": step + 1, **{k: round(v, 5) for k, v in rec.items()}}) + "\n")
            bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items()})
        summary = ", ".join(f"{k} {np.mean(v[:5]):.3f} -> {np.mean(v[-5:]):.3f}" for k, v in hist.items())
        print(f"stage {stage}: {steps} steps, {summary}", flush=True)
    log.close()
    _plot(history, out / "pretrain_losses.png")

    state = {f"encoder.{k}": v.detach().contiguous() for k, v in model.encoder.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps({
        "family": "momo", "kind": "pretrained-encoder", "model": mcfg.model_dump(), "token_spec": {
            "vocab_size": mcfg.vocab_size, **special}, "preprocess": pre.model_dump(),
        "pretraining": cfg.model_dump(), "seconds": round(time.time() - t_start, 1)}, indent=2))
    print(f"pre-trained encoder written to {out} ({time.time() - t_start:.0f}s); fine-tune with "
          f"attrx train --family momo --init-from {out} ...")
    return out


def _plot(history: dict[int, dict[str, list[float]]], path: Path) -> None:
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
    fig.suptitle("MoMo pre-training losses (moving average)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
