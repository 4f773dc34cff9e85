"""Building blocks shared by the model families: the pre-norm attention block, the per-task heads
(modality-wise attention or TIRG, then an MLP), the single-modality switch, and the export wrapper.
No family is named here; every family module builds on it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn


class HeadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = 64
    dropout: float = 0.1


def key_padding_bias(keep: torch.Tensor, dtype: torch.dtype, n_queries: int | None = None) -> torch.Tensor:
    """keep: [B, S] bool, True where a key may be attended to -> an additive mask [B, 1, Q, S], with
    Q = S (self-attention) unless n_queries says otherwise (cross-attention from another sequence).

    Additive rather than boolean: it exports without the NaN guards of the bool form. Expanded over
    the query axis (a view, no copy): onnxruntime's fused `Attention` kernel (opset 23) refuses a
    mask broadcast from [B, 1, 1, S]."""
    s = keep.shape[1]
    return ((1.0 - keep.to(dtype)) * torch.finfo(dtype).min)[:, None, None, :].expand(-1, 1, n_queries or s, s)


def split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, S, 3*D] packed projections -> q, k, v, each [B, heads, S, D/heads]. Split first, then
    one reshape and transpose each: the exported graph then has the pattern export/attention3d.py folds
    into a 3D Attention node (no transposes around it)."""
    b, s, d3 = qkv.shape
    return tuple(t.view(b, s, heads, d3 // 3 // heads).transpose(1, 2) for t in qkv.split(d3 // 3, dim=-1))


class Block(nn.Module):
    """Pre-norm transformer block (BERT-style, as the paper's sequence-wise attention)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = split_heads(self.qkv(self.ln1(x)), self.heads)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding_bias(keep, x.dtype))
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, s, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


def mlp(width: int, hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))


class TaskHead(nn.Module):
    """Task-specific modality-wise attention + MLP head."""

    def __init__(self, width: int, hidden: int, n_classes: int, dropout: float):
        super().__init__()
        self.w = nn.Parameter(torch.randn(width) * 0.02)
        self.mlp = mlp(width, hidden, n_classes, dropout)

    def forward(self, t: torch.Tensor, i: torch.Tensor, tp: torch.Tensor, ip: torch.Tensor, learned: bool,
                gate: tuple[torch.Tensor, torch.Tensor] | None = None):
        if learned:
            gt, gi = gate if gate is not None else (t, i)
            lam = torch.sigmoid(gt @ self.w - gi @ self.w)  # = exp(eT) / (exp(eT) + exp(eI))
        else:
            lam = torch.full_like(tp, 0.5)
        both = tp * ip
        lam = both * lam + (1.0 - both) * tp  # exactly 1 / 0 when one modality is missing
        feat = lam[:, None] * t + (1.0 - lam)[:, None] * i
        return self.mlp(feat), torch.stack([lam, 1.0 - lam], dim=-1)


def apply_inputs(inputs: str, tp: torch.Tensor, ip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A text-only (image-only) model treats every image (title) as absent, in training and serving."""
    if inputs == "text":
        return tp, torch.zeros_like(ip)
    if inputs == "image":
        return torch.zeros_like(tp), ip
    return tp, ip


class TirgHead(nn.Module):
    """Text-image residual gating (TIRG, Vo et al. 2019; the LiT-TIRG paper's fusion) before the MLP:
    f = w_g * sigmoid(G([I; T])) * I + w_r * R([I; T]). It has no learned modality weights: the
    reported weights only say which modalities were present (0.5/0.5 with both)."""

    def __init__(self, width: int, hidden: int, n_classes: int, dropout: float):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU(), nn.Linear(width, width))
        self.res = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU(), nn.Linear(width, width))
        self.w = nn.Parameter(torch.tensor([1.0, 0.1]))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, t: torch.Tensor, i: torch.Tensor, tp: torch.Tensor, ip: torch.Tensor, learned: bool,
                gate=None):
        cat = torch.cat([i, t], -1)
        fused = self.w[0] * torch.sigmoid(self.gate(cat)) * i + self.w[1] * self.res(cat)
        both = (tp * ip)[:, None]
        feat = both * fused + (1.0 - both) * (tp[:, None] * t + ip[:, None] * i)  # one modality: use it alone
        lam = both[:, 0] * 0.5 + (1.0 - both[:, 0]) * tp
        return self.mlp(feat), torch.stack([lam, 1.0 - lam], dim=-1)


def make_head(fusion: str, width: int, hidden: int, n_classes: int, dropout: float) -> nn.Module:
    if fusion == "tirg":
        return TirgHead(width, hidden, n_classes, dropout)
    return TaskHead(width, hidden, n_classes, dropout)


def with_unimodal(model: nn.Module, input_ids, attention_mask, pixel_values, text_present, image_present,
                  **extra):
    """(fused outputs [(logits, weights)], title-only logits, image-only logits) per task. A model
    with unimodal heads (CMA-CLIP's auxiliary heads, SIMLA's heads on its text pass and its image
    [CLS]) answers in one pass; any other family gets
    two more passes, one that sees only the title and one that sees only the image. `extra`
    (`vision_features`) goes to every pass."""
    if getattr(model, "aux_text", None) is not None or getattr(model, "unimodal_in_one_pass", False):
        return model.forward_train(input_ids, attention_mask, pixel_values, text_present, image_present,
                                   **extra)[:3]
    if "vision_features" not in extra and getattr(getattr(model, "vision", None), "outputs_reusable", False):
        extra = {**extra, "vision_features": model.vision(pixel_values).last_hidden_state}  # once, not per pass
    fused = model(input_ids, attention_mask, pixel_values, text_present, image_present, **extra)
    one, zero = torch.ones_like(text_present), torch.zeros_like(text_present)
    text = [lg for lg, _ in model(input_ids, attention_mask, pixel_values, one, zero, **extra)]
    image = [lg for lg, _ in model(input_ids, attention_mask, pixel_values, zero, one, **extra)]
    return fused, text, image


class ExportWrapper(nn.Module):
    """Flattens a model's outputs (any family: same forward) for ONNX: per task, probabilities then
    modality weights, and with `unimodal` the title-only and image-only probabilities; then the
    outputs a model's `forward_export` adds (SIMLA: the per-token concept scores
    and the token ids they belong to, attrx.service.contract.bundle.CONCEPT_OUTPUTS)."""

    def __init__(self, model: nn.Module, unimodal: bool = False):
        super().__init__()
        self.model = model
        self.unimodal = unimodal

    def forward(self, input_ids, attention_mask, pixel_values, text_present, image_present):
        args = (input_ids, attention_mask, pixel_values, text_present, image_present)
        extra: list[torch.Tensor] = []
        if hasattr(self.model, "forward_export"):  # one pass for everything, and outputs of its own
            fused, text, image, extra = self.model.forward_export(*args)
        elif self.unimodal:
            fused, text, image = with_unimodal(self.model, *args)
        else:
            fused, text, image = self.model(*args), None, None
        outs = []
        for j, (logits, w) in enumerate(fused):
            outs += [torch.softmax(logits, dim=-1), w]
            if self.unimodal:
                outs += [torch.softmax(text[j], dim=-1), torch.softmax(image[j], dim=-1)]
        return tuple([*outs, *extra])


def patchify(pixels: torch.Tensor, p: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, N, p*p*3], in the patch order of a stride-p patch embedding."""
    b, c, h, w = pixels.shape
    x = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def contrastive_loss_and_negatives(sim: torch.Tensor, gen: torch.Generator | None
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image-text contrastive loss of a [titles, images] similarity matrix (the true pairs on its
    diagonal), and hard negatives for matching: for each title an image (and for each image a title)
    drawn in proportion to its similarity, never the true partner. Returns (itc, neg_img, neg_txt)."""
    target = torch.arange(sim.shape[0])
    itc = (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)) / 2
    with torch.no_grad():
        w = F.softmax(sim.detach().float(), dim=1).fill_diagonal_(0) + 1e-9
        neg_img = torch.multinomial(w, 1, generator=gen)[:, 0]
        neg_txt = torch.multinomial(w.T.contiguous(), 1, generator=gen)[:, 0]
    return itc, neg_img, neg_txt
