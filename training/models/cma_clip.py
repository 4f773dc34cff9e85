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
    # "patch": CLIP's one-conv patch embedding; "cnn": a small convolutional stem with the same
    # output grid (total stride = patch_size), far better at low-resolution images trained from scratch
    image_stem: str = Field("patch", pattern="^(patch|cnn)$")
    stem_channels: list[int] = [32, 64, 128]
    # bins per RGB channel of a colour histogram computed from the pixels and added to the image
    # [CLS] feature (0: none). Colour is an attribute: a global colour summary is cheap to compute
    # and slow for a small network trained from scratch to learn
    colour_histogram: int = Field(0, ge=0, le=16)
    # the text part of the sequence-wise attention's input. "tokens": the text tower's token states,
    # T' read at the EOS token (the state CLIP pools). "pooled+tokens": the pooled (EOS) state
    # prepended to all token states, so the EOS state appeared twice; T' read at position 0. The
    # default is the old layout so that checkpoints made before "tokens" existed load unchanged;
    # `attrx train` writes "tokens"
    text_sequence: str = Field("pooled+tokens", pattern="^(tokens|pooled\\+tokens)$")
    # unimodal auxiliary heads (training only; not exported): a per-task head on the title tower's
    # and on the image tower's own [CLS] feature
    aux_heads: bool = False
    # what the modality-wise attention weighs. "paper": lambda = softmax(w.T', w.I') mixes the
    # sequence-wise attention outputs T', I', which have already attended to each other, so lambda
    # need not say where the evidence came from. "evidence": the same lambda (still read from T', I')
    # mixes each tower's own features T, I, so lambda is the share of the title's own evidence
    # against the image's own evidence in what the head sees
    modality_weights: str = Field("paper", pattern="^(paper|evidence)$")


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
        from attrx.training.models.momo import MoMoConfig

        return MoMoConfig.model_validate(data)
    return ModelConfig.model_validate(data)


def key_padding_bias(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """keep: [B, S] bool, True where a key may be attended to -> an additive mask [B, 1, S, S].

    Additive rather than boolean: it exports without the NaN guards of the bool form. Expanded over
    the query axis (a view, no copy): onnxruntime's fused `Attention` kernel (opset 23) refuses a
    mask broadcast from [B, 1, 1, S]."""
    s = keep.shape[1]
    return ((1.0 - keep.to(dtype)) * torch.finfo(dtype).min)[:, None, None, :].expand(-1, 1, s, s)


def split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, S, 3*D] packed projections -> q, k, v, each [B, heads, S, D/heads]. Split first, then
    one reshape and transpose each: the exported graph then has the pattern export/onnx.py folds
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


class CnnStem(nn.Module):
    """Conv-BN-GELU stages, each halving the resolution, then a 1x1 conv to the tower width:
    [B, 3, S, S] -> [B, hidden, S/patch, S/patch], a drop-in for CLIP's patch embedding."""

    def __init__(self, hidden: int, patch_size: int, channels: list[int]):
        super().__init__()
        n = max(1, patch_size.bit_length() - 1)
        if 2**n != patch_size:
            raise ValueError(f"image_stem cnn needs a power-of-two patch_size, got {patch_size}")
        chans = [3, *(channels[min(k, len(channels) - 1)] for k in range(n))]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU(),
                       nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]
        layers.append(nn.Conv2d(chans[-1], hidden, 1))
        self.body = nn.Sequential(*layers)

    @property
    def weight(self) -> torch.Tensor:  # CLIPVisionEmbeddings reads patch_embedding.weight.dtype
        return self.body[0].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ColourHistogram(nn.Module):
    """Normalised pixels -> a projected, square-rooted joint RGB histogram [B, width]."""

    def __init__(self, bins: int, width: int, mean, std):
        super().__init__()
        self.bins = bins
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.proj = nn.Sequential(nn.Linear(bins**3, width), nn.LayerNorm(width))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, k = pixel_values.shape[0], self.bins
        rgb = (pixel_values * self.std + self.mean).clamp(0.0, 1.0 - 1e-6)
        # the clamp is a no-op in fp32; it keeps every bin index in range when the graph runs at a
        # lower precision (fp16 rounds 1 - 1e-6 to 1.0)
        q = torch.floor(rgb * k).clamp(0, k - 1).to(torch.int64).flatten(2)  # [B, 3, P]
        idx = (q[:, 0] * k + q[:, 1]) * k + q[:, 2]
        ones = torch.ones_like(idx, dtype=pixel_values.dtype)
        hist = torch.zeros(b, k**3, dtype=pixel_values.dtype, device=pixel_values.device).scatter_add(1, idx, ones)
        return self.proj(torch.sqrt(hist / idx.shape[1]))


def _mlp(width: int, hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))


class TaskHead(nn.Module):
    """Task-specific modality-wise attention + MLP head."""

    def __init__(self, width: int, hidden: int, n_classes: int, dropout: float):
        super().__init__()
        self.w = nn.Parameter(torch.randn(width) * 0.02)
        self.mlp = _mlp(width, hidden, n_classes, dropout)

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
        if cfg.image_stem == "cnn":
            vcfg = vision_model.config
            inner = getattr(vision_model, "vision_model", vision_model)  # transformers < 5 nests it
            inner.embeddings.patch_embedding = CnnStem(vcfg.hidden_size, vcfg.patch_size,
                                                                           cfg.stem_channels)
        self.heads = nn.ModuleList(make_head(cfg.head_fusion, d, cfg.head.hidden, n, cfg.head.dropout) for n in n_classes)
        self.colour = None
        if cfg.colour_histogram:
            from attrx.service.contract.preprocess import CLIP_MEAN, CLIP_STD

            self.colour = ColourHistogram(cfg.colour_histogram, d, cfg.preprocess.get("image_mean", CLIP_MEAN),
                                          cfg.preprocess.get("image_std", CLIP_STD))
        h = cfg.head
        self.aux_text = nn.ModuleList(_mlp(d, h.hidden, n, h.dropout) for n in n_classes) if cfg.aux_heads else None
        self.aux_image = nn.ModuleList(_mlp(d, h.hidden, n, h.dropout) for n in n_classes) if cfg.aux_heads else None
        # the towers' own features, before they meet (aux heads, modality_weights="evidence")
        self.ln_uni = nn.LayerNorm(d) if cfg.use_swa and (cfg.aux_heads or cfg.modality_weights == "evidence") else None

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
        return self.forward_train(input_ids, attention_mask, pixel_values, text_present, image_present)[0]

    def forward_train(self, input_ids, attention_mask, pixel_values, text_present, image_present):
        """(fused outputs as forward returns them, aux text logits, aux image logits); the aux lists
        are empty without aux heads. Only the fused outputs are exported."""
        tp, ip = apply_inputs(self.cfg.inputs, text_present.float(), image_present.float())
        t_out = self.text(input_ids=input_ids, attention_mask=attention_mask)
        v_out = self.vision(pixel_values=pixel_values)
        colour = self.colour(pixel_values) if self.colour is not None else None
        eos = self._eos_index(input_ids, attention_mask)
        t_feat, i_feat, t_uni, i_uni = self._features(t_out, v_out, attention_mask, tp, ip, colour, eos)
        if self.cfg.modality_weights == "evidence":
            fused = [h(t_uni, i_uni, tp, ip, self.cfg.use_mwa, (t_feat, i_feat)) for h in self.heads]
        else:
            fused = [h(t_feat, i_feat, tp, ip, self.cfg.use_mwa) for h in self.heads]
        if self.aux_text is None:
            return fused, [], []
        return fused, [h(t_uni) for h in self.aux_text], [h(i_uni) for h in self.aux_image]

    def _eos_index(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per row, the position of the first EOS token (the state CLIP pools), or of the last real
        token when a row has none."""
        is_eos = input_ids == self.text.config.eos_token_id
        last = (attention_mask.sum(1) - 1).clamp(min=0)
        return torch.where(is_eos.any(1), is_eos.int().argmax(1), last)

    def _text_sequence(self, t_out, attention_mask, tp, eos):
        """(projected text states, their keep mask, the position of T' in them)."""
        if self.cfg.text_sequence == "tokens":
            keep = attention_mask.bool() & (tp[:, None] > 0)
            return self.proj_t(t_out.last_hidden_state), keep, eos
        keep = torch.cat([torch.ones_like(attention_mask[:, :1]), attention_mask], 1).bool() & (tp[:, None] > 0)
        seq = self.proj_t(torch.cat([t_out.pooler_output[:, None], t_out.last_hidden_state], 1))
        return seq, keep, torch.zeros_like(eos)

    def _features(self, t_out, v_out, attention_mask, tp, ip, colour=None, eos=None):
        """(T', I') for the heads and the towers' own (T, I) features. The colour summary, when the
        config has one, is added to the image [CLS] feature."""
        v_cls = self.proj_v(v_out.pooler_output)
        if colour is not None:
            v_cls = v_cls + colour
        if not self.cfg.use_swa:  # --no-swa: the towers' own [CLS] outputs
            t_feat = self.ln(self.proj_t(t_out.pooler_output))
            i_feat = self.ln(v_cls)
            return t_feat, i_feat, t_feat, i_feat
        t_uni = i_uni = None
        if self.ln_uni is not None:
            t_uni = self.ln_uni(self.proj_t(t_out.pooler_output))
            i_uni = self.ln_uni(v_cls)
        t_seq, tkeep, t_pos = self._text_sequence(t_out, attention_mask, tp, eos)
        v_seq = self.proj_v(v_out.last_hidden_state)
        if colour is not None:
            v_seq = torch.cat([v_seq[:, :1] + colour[:, None], v_seq[:, 1:]], 1)
        seq = torch.cat([t_seq + self.type_emb[0], v_seq + self.type_emb[1]], 1)
        vkeep = (ip[:, None] > 0).expand(-1, v_seq.shape[1])
        keep = torch.cat([tkeep, vkeep], 1)
        for blk in self.blocks:
            seq = blk(seq, keep)
        seq = self.ln(seq)
        t_feat = seq.gather(1, t_pos[:, None, None].expand(-1, 1, seq.shape[2]))[:, 0]
        return t_feat, seq[:, t_seq.shape[1]], t_uni, i_uni


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
