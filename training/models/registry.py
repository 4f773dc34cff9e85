"""The model families, one entry each (open_clip's _MODEL_CONFIGS in spirit): the one place that names
them. A new family is a new module (its config, classifier, `create` and `from_checkpoint`) and one
entry here; attrx.training.models.factory and the CLI read everything else from the entry."""

from __future__ import annotations

from attrx.training.models import cma_clip, momo, momo_pretrain, simla, simla_pretrain
from attrx.training.models.family import Family

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("cma-clip", "CMA-CLIP", cma_clip.CMAClipConfig, "tiny", cma_clip.create, cma_clip.from_checkpoint),
    Family("momo", "MoMo", momo.MoMoConfig, "momo-tiny", momo.create, momo.from_checkpoint,
           pretrainer=momo_pretrain.MoMoPretrainer, encoder_prefix="encoder.",
           pretrain_fields=("modality_specific_layernorm", "stage1_steps", "stage2_steps", "stage3_steps",
                            "mim_ratio", "cmm_ratio")),
    Family("simla", "SIMLA", simla.SimlaConfig, "simla-tiny", simla.create, simla.from_checkpoint,
           pretrainer=simla_pretrain.SimlaPretrainer, mask_token=True,
           pretrain_fields=("lock_image", "steps", "xmm_ratio")),
)}
