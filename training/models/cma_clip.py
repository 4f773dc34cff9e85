"""CMA-CLIP (Liu et al., "CMA-CLIP: Cross-Modality Attention CLIP for Image-Text Classification").

CLIP text and image towers -> sequence-wise attention (a transformer over [text tokens; image
patches]) -> per-task modality-wise attention (lambda = softmax(w.T', w.I')) -> per-task MLP heads.

A missing modality is masked: its tokens are hidden from the sequence-wise attention and its
modality weight is exactly 0 (the other exactly 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class TowerConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int


class VisionTowerConfig(TowerConfig):
    image_size: int
    patch_size: int


class FusionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 64
    num_layers: int = Field(2, ge=1)
    num_heads: int = 4
    mlp_ratio: int = 2
    dropout: float = 0.1


class HeadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = 64
    dropout: float = 0.1


class ModelConfig(BaseModel):
    """One JSON file per architecture under training/configs/ (tiny.json, base.json)."""

    model_config = ConfigDict(extra="forbid")
    family: str = "cma-clip"
    description: str = ""
    text: TowerConfig
    vision: VisionTowerConfig
    fusion: FusionConfig = FusionConfig()
    head: HeadConfig = HeadConfig()
    preprocess: dict = {}
    vocab_size: int = 1000
    use_swa: bool = True
    use_mwa: bool = True
    head_fusion: str = Field("mwa", pattern="^(mwa|tirg)$")  # --fusion: modality-wise attention or TIRG
    inputs: str = Field("both", pattern="^(both|text|image)$")  # single-modality baselines


def load_config(name_or_path: str):
    """A built-in name (`tiny`, `base`, `momo-tiny`, ...) or a path to a JSON file. The file's
    `family` picks the schema: CMA-CLIP's ModelConfig or MoMo's MoMoConfig."""
    p = Path(name_or_path)
    if not p.suffix:
        p = CONFIG_DIR / f"{name_or_path}.json"
    if not p.is_file():
        known = sorted(q.stem for q in CONFIG_DIR.glob("*.json"))
        raise FileNotFoundError(f"model config {name_or_path!r} not found; built-in configs: {', '.join(known)}")
    data = json.loads(p.read_text())
    if data.get("family") == "momo":
        from training.models.momo import MoMoConfig

        return MoMoConfig.model_validate(data)
    return ModelConfig.model_validate(data)


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
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # keep: [B, S] bool, True where a key may be attended to. An additive mask (rather than a
        # boolean one) exports to a plain Add before Softmax, without the NaN guards of the bool form.
        bias = (1.0 - keep.to(x.dtype))[:, None, None, :] * torch.finfo(x.dtype).min
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, s, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TaskHead(nn.Module):
    """Task-specific modality-wise attention + MLP head."""

    def __init__(self, width: int, hidden: int, n_classes: int, dropout: float):
        super().__init__()
        self.w = nn.Parameter(torch.randn(width) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, t: torch.Tensor, i: torch.Tensor, tp: torch.Tensor, ip: torch.Tensor, learned: bool):
        if learned:
            lam = torch.sigmoid(t @ self.w - i @ self.w)  # = exp(eT) / (exp(eT) + exp(eI))
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

    def forward(self, t: torch.Tensor, i: torch.Tensor, tp: torch.Tensor, ip: torch.Tensor, learned: bool):
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


class CMAClip(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        n_classes: list[int],
        *,
        text_model: CLIPTextModel | None = None,
        vision_model: CLIPVisionModel | None = None,
        pad_token_id: int = 0,
        bos_token_id: int = 2,
        eos_token_id: int = 3,
    ):
        super().__init__()
        self.cfg = cfg
        max_len = int(cfg.preprocess.get("max_text_len", 32))
        if text_model is None:
            tc = CLIPTextConfig(
                vocab_size=cfg.vocab_size, max_position_embeddings=max_len,
                pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                hidden_act="gelu", **cfg.text.model_dump())
            text_model = CLIPTextModel(tc)
        if vision_model is None:
            vc = CLIPVisionConfig(hidden_act="gelu", **cfg.vision.model_dump())
            vision_model = CLIPVisionModel(vc)
        self.text = text_model
        self.vision = vision_model
        dt, dv, d = text_model.config.hidden_size, vision_model.config.hidden_size, cfg.fusion.width
        self.proj_t = nn.Linear(dt, d)
        self.proj_v = nn.Linear(dv, d)
        self.type_emb = nn.Parameter(torch.randn(2, d) * 0.02)
        f = cfg.fusion
        # --no-swa: no sequence-wise attention blocks at all (not just unused ones)
        self.blocks = nn.ModuleList(Block(d, f.num_heads, f.mlp_ratio, f.dropout)
                                    for _ in range(f.num_layers if cfg.use_swa else 0))
        self.ln = nn.LayerNorm(d)
        self.heads = nn.ModuleList(make_head(cfg.head_fusion, d, cfg.head.hidden, n, cfg.head.dropout) for n in n_classes)

    family = "cma-clip"

    @property
    def token_spec(self) -> dict:
        c = self.text.config
        return {"vocab_size": c.vocab_size, "pad_token_id": c.pad_token_id, "bos_token_id": c.bos_token_id,
                "eos_token_id": c.eos_token_id}

    # parameter groups for the paper's three stages
    def tower_modules(self) -> list[nn.Module]:
        return [self.text, self.vision]

    def tower_parameters(self):
        return [*self.text.parameters(), *self.vision.parameters()]

    def image_tower_parameters(self):
        return list(self.vision.parameters())

    def head_parameters(self):
        return list(self.heads.parameters())

    def forward(self, input_ids, attention_mask, pixel_values, text_present, image_present):
        """Returns a list (one per task) of (logits [B, C], modality weights [B, 2] = (text, image))."""
        tp, ip = apply_inputs(self.cfg.inputs, text_present.float(), image_present.float())
        t_out = self.text(input_ids=input_ids, attention_mask=attention_mask)
        v_out = self.vision(pixel_values=pixel_values)
        if self.cfg.use_swa:
            t_seq = self.proj_t(torch.cat([t_out.pooler_output[:, None], t_out.last_hidden_state], 1))
            v_seq = self.proj_v(v_out.last_hidden_state)
            seq = torch.cat([t_seq + self.type_emb[0], v_seq + self.type_emb[1]], 1)
            tkeep = torch.cat([torch.ones_like(attention_mask[:, :1]), attention_mask], 1).bool() & (tp[:, None] > 0)
            vkeep = (ip[:, None] > 0).expand(-1, v_seq.shape[1])
            keep = torch.cat([tkeep, vkeep], 1)
            for blk in self.blocks:
                seq = blk(seq, keep)
            seq = self.ln(seq)
            t_feat, i_feat = seq[:, 0], seq[:, t_seq.shape[1]]
        else:  # --no-swa: the towers' own [CLS] outputs
            t_feat = self.ln(self.proj_t(t_out.pooler_output))
            i_feat = self.ln(self.proj_v(v_out.pooler_output))
        return [h(t_feat, i_feat, tp, ip, self.cfg.use_mwa) for h in self.heads]


class ExportWrapper(nn.Module):
    """Flattens CMAClip outputs for ONNX: per task, probabilities then modality weights."""

    def __init__(self, model: CMAClip):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, pixel_values, text_present, image_present):
        outs = []
        for logits, weights in self.model(input_ids, attention_mask, pixel_values, text_present, image_present):
            outs += [torch.softmax(logits, dim=-1), weights]
        return tuple(outs)
