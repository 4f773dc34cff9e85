"""SIMLA's pre-training tasks on a catalog without labels, all on one shared model:

- itc      contrastive alignment of the text pass's [CLS] and the image [CLS] (as ALBEF);
- itm      image-text matching on the multimodal [CLS], negatives drawn in proportion to the
           contrastive similarity (as ALBEF);
- mlm      masked language modelling conditioned on the image: 15% of the title tokens become
           [MASK] and the multimodal pass (title tokens reading the image patches) restores them;
- xmm      cross-modality reconstruction: half of the image's patches are blanked, the image
           encoder's patch states become the *queries* of the same shared layers, which read the
           title's text-pass states through their cross-attention, and a linear layer restores the
           blanked patches' (normalised) pixels;
- concept  the concept head on the image [CLS] predicts the title tokens most attended from the
           multimodal [CLS] in the last layer (top k of row 0 of its self-attention).

`attrx.training.pretrain` runs them (one optimizer step over their sum per batch) and keeps the
classifier's weights; the heads here are discarded.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attrx.training.models.layers import contrastive_loss_and_negatives, patchify
from attrx.training.models.simla import (
    SimlaClassifier,
    SimlaConfig,
    concept_labels,
    concept_loss,
    special_tokens,
)

LOSSES = ("itc", "itm", "mlm", "xmm", "concept")


class SimlaPretrainer(nn.Module):
    def __init__(self, cfg: SimlaConfig, max_len: int, special: dict[str, int]):
        super().__init__()
        self.cfg = cfg
        self.mask_token_id = special.get("mask_token_id", 1)
        spec = {k: special[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
        self.encoder = SimlaClassifier(cfg, [], **spec)  # no task heads: its weights are what is kept
        self.spec = self.encoder.token_spec
        d = cfg.width
        self.itc_proj_t, self.itc_proj_i = nn.Linear(d, d), nn.Linear(d, d)
        self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
        self.itm_head = nn.Linear(d, 2)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.pix_head = nn.Linear(d, 3 * self._patch() ** 2)
        self.mlm_ratio, self.xmm_ratio = 0.15, 0.5

    def _patch(self) -> int:
        """The pixel side of one image token (the tower's grid over the input)."""
        size, image = self.cfg.image_size, self.encoder.image
        with torch.no_grad():
            image.eval()
            n = image(torch.zeros(1, 3, size, size)).shape[1] - 1
            image.train()
        return size // int(round(math.sqrt(n)))

    def losses(self, ids, mask, pixels, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Every task's loss on one batch of title-image pairs."""
        enc = self.encoder
        b, ones = ids.shape[0], torch.ones(ids.shape[0])
        t, m, v, keep, row0 = enc.passes(ids, mask, pixels, ones, ones, cls_attn=True)
        out = dict(zip(("itc", "itm"), self._itc_itm(ids, keep, t[:, 0], v, gen), strict=True))
        out["mlm"] = self._mlm(ids, keep, v, gen)
        out["xmm"] = self._xmm(t, keep, pixels, gen)
        labels = concept_labels(ids, keep, row0.detach(), self.cfg.concept_top_k, self.spec)
        out["concept"] = concept_loss(enc.concept(v[:, 0]), labels, torch.ones(b, dtype=torch.bool))
        return out

    def _itc_itm(self, ids, keep, t_cls, v, gen):
        b = ids.shape[0]
        zt = F.normalize(self.itc_proj_t(t_cls), dim=-1)
        zi = F.normalize(self.itc_proj_i(v[:, 0]), dim=-1)
        sim = self.logit_scale.exp().clamp(max=100) * zt @ zi.T
        itc, neg_img, neg_txt = contrastive_loss_and_negatives(sim, gen)
        enc = self.encoder
        x = enc.text.embed(torch.cat([ids, ids, ids[neg_txt]]))
        kk = torch.cat([keep, keep, keep[neg_txt]])
        vv = torch.cat([v, v[neg_img], v])
        m = enc.text(x, kk, vv, torch.ones(vv.shape[:2], dtype=torch.bool), torch.ones(3 * b))
        labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long()
        return itc, F.cross_entropy(self.itm_head(m[:, 0]), labels)

    def _mlm(self, ids, keep, v, gen) -> torch.Tensor:
        cand = keep & ~special_tokens(ids, self.spec)
        masked = cand & (torch.rand(ids.shape, generator=gen) < self.mlm_ratio)
        need = cand.any(1) & ~masked.any(1)
        if need.any():  # one masked token at least in every title with a word
            noise = torch.rand(ids.shape, generator=gen) * cand
            masked[need, noise[need].argmax(1)] = True
        enc = self.encoder
        x = enc.text.embed(ids.masked_fill(masked, self.mask_token_id))
        m = enc.text(x, keep, v, torch.ones(v.shape[:2], dtype=torch.bool), torch.ones(ids.shape[0]))
        logits = m[masked] @ enc.text.tok_embed.weight.T + self.mlm_bias
        return F.cross_entropy(logits, ids[masked])

    def _xmm(self, t, keep, pixels, gen) -> torch.Tensor:
        """Blank half the patches; the patch states query the title through the shared layers."""
        p = self.pix_head.out_features // 3
        p = int(round(math.sqrt(p)))
        b, _, h, w = pixels.shape
        gh, gw = h // p, w // p
        hidden = torch.rand(b, gh * gw, generator=gen) < self.xmm_ratio
        hidden[:, 0] |= ~hidden.any(1)  # at least one blanked patch per image
        grid = hidden.view(b, 1, gh, 1, gw, 1).expand(b, 1, gh, p, gw, p).reshape(b, 1, h, w)
        v = self.encoder.image(pixels.masked_fill(grid, 0.0))
        patches = v[:, 1:]
        q_keep = torch.ones(patches.shape[:2], dtype=torch.bool)
        rec = self.encoder.text(patches, q_keep, t, keep, torch.ones(b))
        target = patchify(pixels, p)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        err = ((self.pix_head(rec) - target) ** 2).mean(-1)
        return err[hidden].mean()
