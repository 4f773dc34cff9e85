"""MoMo's pre-training objectives on its shared encoder: masked image modelling, masked language
modelling, cross-modal masking, image-text contrast and matching with hard negatives. Each stage has
its own decoders; `attrx.training.pretrain` runs the stages."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attrx.training.models.layers import contrastive_loss_and_negatives, patchify
from attrx.training.models.momo import (
    IMAGE,
    TEXT,
    MAEDecoder,
    MoMoConfig,
    SharedEncoder,
    visible_tokens,
)


class MoMoPretrainer(nn.Module):
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
        itc, neg_img, neg_txt = contrastive_loss_and_negatives(sim, gen)
        cls = self.joint_cls(torch.cat([ids, ids, ids[neg_txt]]), torch.cat([mask, mask, mask[neg_txt]]),
                             torch.cat([pixels, pixels[neg_img], pixels]))
        labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long()
        itm = F.cross_entropy(self.itm_head(cls), labels)
        return itc, itm
