"""`attrx train`'s parameters: every knob of a training run, written to the checkpoint's config.json."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

STAGES = ("warmup", "e2e", "tune")


class TrainConfig(BaseModel):
    """Every knob of a training run; written to the checkpoint's config.json."""

    model_config = ConfigDict(extra="forbid")
    catalog: str
    attributes: list[str] = Field(min_length=1)
    out: str
    config: str = "tiny"
    # a family of attrx.training.models.registry (checked when the model is built, so that this module
    # and the CLI's help need no torch); default: the config's
    family: str | None = None
    init_from: str | None = None
    tokenizer: str | None = None
    vocab_size: int | None = None
    warmup_epochs: int = Field(2, ge=0)
    warmup_lr: float = 1e-3
    e2e_epochs: int = Field(10, ge=0)
    e2e_lr: float = 5e-4
    tune_epochs: int = Field(2, ge=0)
    tune_lr: float = 5e-4
    batch_size: int = Field(32, ge=1)
    min_class_count: int = Field(0, ge=0, description="labels with fewer training examples fold into 'other'")
    weight_decay: float = 1e-4
    modality_dropout: float = Field(0.1, ge=0.0, le=1.0)
    # teach a multimodal model that a present title can be silent: per item and attribute, with this
    # probability, the words naming that attribute's labels are removed from the training title
    silence_title: float = Field(0.3, ge=0.0, le=1.0)
    # unimodal auxiliary heads on the title tower and the image tower (Gradient-Blending); 0 turns them off
    aux_loss_weight: float = Field(0.5, ge=0.0)
    modality_weights: str = Field("evidence", pattern="^(paper|evidence)$")
    augment_images: bool = True
    patience: int = Field(5, ge=0, description="end a stage after this many epochs without a better val loss (0: never)")
    no_mwa: bool = False
    no_swa: bool = False
    fusion: str = Field("mwa", pattern="^(mwa|tirg)$")
    inputs: str = Field("both", pattern="^(both|text|image)$")
    lock_image: bool = False
    modality_specific_layernorm: bool = False
    # record constraints between attributes: learned from the training split (and/or taxonomy CSVs)
    constraints: str = Field("learn", pattern="^(learn|none)$")
    taxonomy: list[str] = []
    # how titles spell the values: learn (rules, spellings in the training titles), none (the labels
    # only), or a label_variants.json to use as it is; synonyms: a CSV attribute,value,synonym
    label_variants: str = "learn"
    synonyms: str | None = None
    # value families: a CSV attribute,value,family; none: no families (default: attrx's colour
    # families for an attribute most of whose values are colour names)
    families: str | None = None
    # findings of `attrx audit` (JSONL): their (product, attribute) labels are left out of training
    # and calibration, as if missing
    exclude_suspect_labels: str | None = None
    val_frac: float = Field(0.1, gt=0.0, lt=0.5)
    test_frac: float = Field(0.1, ge=0.0, lt=0.5)
    seed: int = 0
    threads: int | None = None
    # data: decoded images in a disk store read per batch (memory does not grow with the catalog),
    # kept across runs in image_cache; in_memory holds every decoded image in RAM instead
    in_memory: bool = False
    image_cache: str | None = None
    workers: int | None = Field(None, ge=0, description="DataLoader and decoding worker processes (default cores - 1)")
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")
    amp: str = Field("fp32", pattern="^(fp32|bf16|fp16)$", description="autocast precision (--amp)")
    progress: bool = True

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        """A checkpoint written before autocast was spelled `amp` recorded it as `precision`."""
        if isinstance(data, dict) and "precision" in data and "amp" not in data:
            data = {("amp" if k == "precision" else k): v for k, v in data.items()}
        return data


class PretrainConfig(BaseModel):
    """Every knob of `attrx pretrain`; written to the pre-training folder's config.json."""

    model_config = ConfigDict(extra="forbid")
    catalog: str
    out: str
    family: str = Field("momo", description="a family that pre-trains (models/registry.py): momo or simla")
    config: str | None = Field(None, description="default: momo-tiny or simla-tiny")
    split: str | None = Field(None, pattern="^(train|val|test)$", description="use only this id-hash split")
    val_frac: float = 0.1
    test_frac: float = 0.1
    stage1_steps: int = Field(100, ge=0)
    stage2_steps: int = Field(100, ge=0)
    stage3_steps: int = Field(100, ge=0)
    steps: int = Field(300, ge=0, description="SIMLA: steps of its one stage")
    xmm_ratio: float = Field(0.5, gt=0, lt=1)
    lock_image: bool = False
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
