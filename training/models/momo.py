"""MoMo (Chada et al., "MoMo: A shared encoder Model for text, image and multi-Modal representations").

One transformer encoder for text tokens, image patches and both: modality-specific input
embeddings (token embedding + positions for text; patch projection + positions for images; a
modality-type embedding), a [CLS] token, shared attention and MLP layers.

For attribute extraction the shared encoder reads [CLS; title tokens; image patches]; the text
part and the image part of its output are mean-pooled into T' and I', and the same task-specific
modality-wise attention and MLP heads as CMA-CLIP turn them into predictions, so a MoMo bundle
reports modality weights and masks a missing modality the same way.

`visible_tokens` is the MAE-style selection used by masked modelling: the encoder gets only the
visible tokens (masked ones are not in its input at all).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from attrx.service.contract.preprocess import PreprocessConfig
from attrx.training.models.family import load_encoder, pretrained_folder
from attrx.training.models.layers import (
    Block,
    HeadConfig,
    apply_inputs,
    key_padding_bias,
    make_head,
    split_heads,
)

TEXT, IMAGE = 0, 1


class MoMoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: str = "momo"
    description: str = ""
    width: int = 64
    num_layers: int = Field(2, ge=1)
    num_heads: int = 4
    mlp_ratio: int = 2
    dropout: float = 0.1
    image_size: int = 64
    patch_size: int = 16
    # decoders used only by pre-training (discarded afterwards)
    decoder_width: int = 48
    decoder_layers: int = 1
    decoder_heads: int = 4
    head: HeadConfig = HeadConfig()
    preprocess: dict = {}
    vocab_size: int = 1000
    use_mwa: bool = True
    head_fusion: str = Field("mwa", pattern="^(mwa|tirg)$")  # --fusion: modality-wise attention or TIRG
    inputs: str = Field("both", pattern="^(both|text|image)$")  # single-modality baselines
    modality_specific_layernorm: bool = False  # MS-CLIP: shared weights, per-modality LayerNorms


class SharedBlock(Block):
    """A pre-norm transformer block shared by all modalities. With `modality_specific_layernorm`
    (MS-CLIP's finding), attention and MLP weights stay shared but each modality has its own
    LayerNorms; `modality` [B, S] says which one a token takes (0 text and [CLS], 1 image)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float, modality_specific_ln: bool):
        super().__init__(width, heads, mlp_ratio, dropout)
        self.specific = modality_specific_ln
        if modality_specific_ln:
            self.ln1_img = nn.LayerNorm(width)
            self.ln2_img = nn.LayerNorm(width)

    def _norm(self, ln, ln_img, x, is_img):
        return torch.where(is_img, ln_img(x), ln(x)) if self.specific else ln(x)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, modality: torch.Tensor | None = None) -> torch.Tensor:
        b, s, d = x.shape
        is_img = (modality == IMAGE)[..., None] if (self.specific and modality is not None) else None
        if is_img is None and self.specific:
            is_img = torch.zeros(b, s, 1, dtype=torch.bool, device=x.device)
        h = self._norm(self.ln1, getattr(self, "ln1_img", None), x, is_img)
        q, k, v = split_heads(self.qkv(h), self.heads)
        attn = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_padding_bias(keep, x.dtype))
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, s, d)))
        return x + self.drop(self.mlp(self._norm(self.ln2, getattr(self, "ln2_img", None), x, is_img)))


class SharedEncoder(nn.Module):
    def __init__(self, cfg: MoMoConfig, max_text_len: int, pad_token_id: int = 0):
        super().__init__()
        d, p = cfg.width, cfg.patch_size
        self.cfg = cfg
        self.n_patches = (cfg.image_size // p) ** 2
        self.tok_embed = nn.Embedding(cfg.vocab_size, d, padding_idx=pad_token_id)
        self.txt_pos = nn.Parameter(torch.randn(1, max_text_len, d) * 0.02)
        self.patch_embed = nn.Conv2d(3, d, kernel_size=p, stride=p)
        self.img_pos = nn.Parameter(torch.randn(1, self.n_patches, d) * 0.02)
        self.type_emb = nn.Parameter(torch.randn(2, d) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.blocks = nn.ModuleList(SharedBlock(d, cfg.num_heads, cfg.mlp_ratio, cfg.dropout,
                                                cfg.modality_specific_layernorm) for _ in range(cfg.num_layers))
        self.ln = nn.LayerNorm(d)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.tok_embed(input_ids) + self.txt_pos[:, : input_ids.shape[1]] + self.type_emb[TEXT]

    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)
        return x + self.img_pos + self.type_emb[IMAGE]

    def image_parameters(self) -> list[nn.Parameter]:
        """The image-specific input embedding (what --lock-image freezes in a shared encoder)."""
        return [*self.patch_embed.parameters(), self.img_pos]

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor, modality: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, S, D] (already embedded), keep [B, S] bool, modality [B, S] (0 text, 1 image;
        needed for modality-specific LayerNorms) -> [B, 1 + S, D] with [CLS] first."""
        b = tokens.shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1), tokens], 1)
        keep = torch.cat([torch.ones_like(keep[:, :1]), keep], 1)
        if modality is not None:
            modality = torch.cat([torch.full_like(modality[:, :1], TEXT), modality], 1)
        for blk in self.blocks:
            x = blk(x, keep, modality)
        return self.ln(x)


def visible_tokens(x: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather the visible tokens of each row to the front (MAE-style removal of masked tokens).

    x [B, S, D], visible [B, S] bool -> (x_vis [B, K, D], keep [B, K], index [B, K]) where K is the
    largest visible count in the batch; slots past a row's count are zeros with keep False, so no
    masked token's content reaches the encoder.
    """
    order = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)
    k = int(visible.sum(1).max())
    idx = order[:, :k]
    keep = torch.gather(visible, 1, idx)
    x_vis = torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1])) * keep[..., None]
    return x_vis, keep, idx


class MoMoClassifier(nn.Module):
    """Shared encoder + per-task modality-wise attention heads, with CMA-CLIP's forward signature."""

    family = "momo"

    def __init__(self, cfg: MoMoConfig, n_classes: list[int], *, pad_token_id: int = 0, bos_token_id: int = 2,
                 eos_token_id: int = 3, **_):
        super().__init__()
        self.cfg = cfg
        self.max_text_len = int(cfg.preprocess.get("max_text_len", 32))
        self.token_spec = {"vocab_size": cfg.vocab_size, "pad_token_id": pad_token_id,
                           "bos_token_id": bos_token_id, "eos_token_id": eos_token_id}
        self.encoder = SharedEncoder(cfg, self.max_text_len, pad_token_id)
        self.heads = nn.ModuleList(make_head(cfg.head_fusion, cfg.width, cfg.head.hidden, n, cfg.head.dropout)
                                   for n in n_classes)

    def image_tower_parameters(self):
        return self.encoder.image_parameters()

    # parameter groups for the three fine-tuning stages (the encoder plays the towers' part)
    def tower_modules(self) -> list[nn.Module]:
        return [self.encoder]

    def tower_parameters(self):
        return list(self.encoder.parameters())

    def head_parameters(self):
        return list(self.heads.parameters())

    def encode(self, input_ids, attention_mask, pixel_values, text_present, image_present):
        tp, ip = apply_inputs(self.cfg.inputs, text_present.float(), image_present.float())
        t = self.encoder.embed_text(input_ids)
        v = self.encoder.embed_image(pixel_values)
        tkeep = attention_mask.bool() & (tp[:, None] > 0)
        vkeep = (ip[:, None] > 0).expand(-1, v.shape[1])
        modality = torch.cat([torch.full(tkeep.shape, TEXT, device=t.device),
                              torch.full(vkeep.shape, IMAGE, device=t.device)], 1)
        out = self.encoder(torch.cat([t, v], 1), torch.cat([tkeep, vkeep], 1), modality)
        lt = t.shape[1]
        text_out, image_out = out[:, 1 : 1 + lt], out[:, 1 + lt :]
        tw = tkeep.to(out.dtype)[..., None]
        vw = vkeep.to(out.dtype)[..., None]
        t_feat = (text_out * tw).sum(1) / tw.sum(1).clamp(min=1.0)
        i_feat = (image_out * vw).sum(1) / vw.sum(1).clamp(min=1.0)
        return t_feat, i_feat, tp, ip

    def forward(self, input_ids, attention_mask, pixel_values, text_present, image_present):
        t_feat, i_feat, tp, ip = self.encode(input_ids, attention_mask, pixel_values, text_present, image_present)
        return [h(t_feat, i_feat, tp, ip, self.cfg.use_mwa) for h in self.heads]


class MAEDecoder(nn.Module):
    """A light decoder (MAE-style): encoder outputs of the visible tokens are put back in place, the
    masked places get a learned [MASK] embedding, and a few transformer blocks predict every place."""

    def __init__(self, enc_width: int, width: int, layers: int, heads: int, seq_len: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(enc_width, width)
        self.mask_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, seq_len, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads, 2, 0.0) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)

    def forward(self, enc_vis: torch.Tensor, idx: torch.Tensor, keep: torch.Tensor, seq_len: int) -> torch.Tensor:
        b = enc_vis.shape[0]
        y = self.proj(enc_vis)
        full = self.mask_token.expand(b, seq_len, -1).clone()
        # only real visible slots go back in place (padding slots would overwrite masked places)
        src = torch.where(keep[..., None], y, full.gather(1, idx[..., None].expand(-1, -1, y.shape[-1])))
        full = full.scatter(1, idx[..., None].expand(-1, -1, y.shape[-1]), src)
        x = full + self.pos[:, :seq_len]
        ones = torch.ones(b, seq_len, dtype=torch.bool, device=x.device)
        for blk in self.blocks:
            x = blk(x, ones)
        return self.out(self.ln(x))


def create(opts, mcfg: MoMoConfig, n_classes: list[int], special: dict[str, int], vocab: int
           ) -> tuple[MoMoClassifier, PreprocessConfig]:
    """A new MoMo classifier for a training run: random, or its encoder from `attrx pretrain --family
    momo` (--init-from)."""
    if opts.no_swa:
        raise ValueError("--no-swa is a CMA-CLIP ablation; MoMo's shared encoder always attends across modalities")
    update = {"use_mwa": not opts.no_mwa, "head_fusion": opts.fusion, "inputs": opts.inputs}
    if opts.init_from:
        src = pretrained_folder(opts.init_from, "momo")
        mcfg = MoMoConfig.model_validate(src["model"]).model_copy(update=update)
        model = MoMoClassifier(mcfg, n_classes, **special)
        load_encoder(model, opts.init_from)
        return model, PreprocessConfig.model_validate(src["preprocess"])
    update.update(vocab_size=vocab, modality_specific_layernorm=opts.modality_specific_layernorm)
    mcfg = mcfg.model_copy(update=update)
    pre = PreprocessConfig(**{"image_size": mcfg.image_size, **mcfg.preprocess})
    return MoMoClassifier(mcfg, n_classes, **special), pre


def from_checkpoint(cfg: dict, mcfg: MoMoConfig, n_classes: list[int]) -> MoMoClassifier:
    spec = {k: v for k, v in cfg["token_spec"].items() if k != "vocab_size"}
    return MoMoClassifier(mcfg, n_classes, **spec)
