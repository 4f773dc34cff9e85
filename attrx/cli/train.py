"""`attrx train` and `attrx pretrain`: checkpoint from a catalog."""

from __future__ import annotations

from attrx.cli.common import (
    csv_list,
    deprecated,
    input_argument,
    mlflow_flags,
    model_defaults,
    need_training_extra,
)
from attrx.training.models.configs import config_families, list_configs


def cmd_train(a) -> None:
    need_training_extra()
    from attrx.training.tracked import tracked_train
    from attrx.training.tracking import tracking_uri
    from attrx.training.train import TrainConfig

    fields = TrainConfig.model_fields
    cfg = TrainConfig(**{k: v for k, v in vars(a).items() if k in fields and v is not None}, progress=not a.quiet)
    tracked_train(cfg, tracking_uri(a.mlflow_uri), a.mlflow_experiment)


def cmd_pretrain(a) -> None:
    need_training_extra()
    from attrx.training.params import PretrainConfig
    from attrx.training.pretrain import pretrain

    fields = PretrainConfig.model_fields
    pretrain(PretrainConfig(**{k: v for k, v in vars(a).items() if k in fields and v is not None},
                            progress=not a.quiet))


def _train_parser(sub) -> None:
    from attrx.training.params import TrainConfig

    t = sub.add_parser("train", help="train a multi-task model of any family (CMA-CLIP's three stages by default)")
    input_argument(t, "CSV, JSONL or Parquet with id,title,image,<attributes>")
    t.add_argument("--attributes", required=True, type=csv_list, help="attribute columns, e.g. colour,pattern")
    t.add_argument("--out", required=True, help="checkpoint folder")
    t.add_argument("--family", help=f"model family: {', '.join(config_families())} (default: the config's; a "
                                    "family's own tiny config replaces the default --config tiny)")
    t.add_argument("--config", help=f"a built-in config ({', '.join(list_configs())}) or a JSON file")
    t.add_argument("--init-from", help="CMA-CLIP: a local Hugging Face CLIP folder for the text and image towers; "
                                       "MoMo and SIMLA: a folder written by attrx pretrain")
    t.add_argument("--tokenizer", help="tokenizer.json to use instead of training one on the titles")
    t.add_argument("--vocab-size", type=int, help="WordPiece vocabulary size when training a tokenizer")
    for stage, (ep, lr) in {"warmup": (2, 1e-3), "e2e": (10, 5e-4), "tune": (2, 5e-4)}.items():
        t.add_argument(f"--{stage}-epochs", type=int, help=f"epochs of the {stage} stage (default {ep}; 0 skips it)")
        t.add_argument(f"--{stage}-lr", type=float, help=f"peak learning rate of the {stage} stage (default {lr:g})")
    t.add_argument("--batch-size", type=int, help="products per optimiser step")
    t.add_argument("--min-class-count", type=int,
                   help="labels with fewer training examples fold into one class 'other' (default 0: none)")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-4)")
    t.add_argument("--modality-dropout", type=float,
                   help="probability of hiding the title or the image of a training item (default 0.1)")
    t.add_argument("--silence-title", type=float,
                   help="per training item and attribute, the probability of removing the words that name that "
                        "attribute's labels from the title, so the model learns that a present title can be silent "
                        "(default 0.3; 0 turns it off; off for --inputs text|image)")
    t.add_argument("--aux-loss-weight", type=float,
                   help="weight of the unimodal auxiliary heads' losses (a head on the title tower alone and one "
                        "on the image tower alone; exported as the title-only and image-only outputs that show "
                        "title-image conflicts) (default 0.5; 0 turns them off: conflicts then come from two "
                        "more masked passes)")
    t.add_argument("--modality-weights", choices=["paper", "evidence"],
                   help="paper: lambda mixes the sequence-wise attention outputs T', I' (which have already "
                        "attended to each other); evidence: the same lambda, still read from T', I', mixes each "
                        "tower's own features, so it is the share of the title's vs the image's own evidence "
                        "(default evidence)")
    t.add_argument("--no-augment-images", dest="augment_images", action="store_false", default=None,
                   help="no image augmentation (default: random crop/shift/flip; colours never change)")
    t.add_argument("--patience", type=int,
                   help="end a stage after this many epochs without a better validation loss (default 5; 0: never)")
    t.add_argument("--no-mwa", action="store_true", help="ablation: plain average instead of modality-wise attention")
    t.add_argument("--no-swa", action="store_true", help="ablation: towers' [CLS] outputs, no sequence-wise attention")
    t.add_argument("--fusion", choices=["mwa", "tirg"],
                   help="how title and image features meet before the heads: modality-wise attention (default) "
                        "or text-image residual gating (LiT-TIRG)")
    t.add_argument("--inputs", choices=["both", "text", "image"],
                   help="single-modality baselines: a text-only (image-only) model ignores every image (title), "
                        "also when served (default both)")
    t.add_argument("--lock-image", action="store_true",
                   help="locked-image tuning: the image tower (MoMo: the image input embedding) never trains")
    t.add_argument("--modality-specific-layernorm", action="store_true",
                   help="MoMo: shared attention/MLP weights, per-modality LayerNorms (MS-CLIP)")
    _data_options(t)
    deprecated(t, "--precision", "--amp", "amp", choices=["fp32", "bf16", "fp16"])
    model_defaults(t, TrainConfig)
    mlflow_flags(t, "the run's parameters, per-epoch metrics and files")
    t.set_defaults(func=cmd_train)


def _data_options(t) -> None:
    t.add_argument("--constraints", choices=["learn", "none"],
                   help="learn: constraints between attributes (hierarchies, allowed combinations) from the "
                        "training split, applied when a product's answer is decoded (default); none: each "
                        "attribute's own argmax")
    t.add_argument("--taxonomy", action="append", metavar="CSV",
                   help="allowed combinations: a CSV whose header names attributes and whose rows are the "
                        "combinations a record may hold; replaces what was learned for those attributes "
                        "(repeatable)")
    t.add_argument("--label-variants", metavar="learn|none|FILE",
                   help="how titles spell the values, for situations, silent-title training and calibration: "
                        "learn (default: plural and singular, hyphens and spacing, spellings found in the "
                        "training titles; written to OUT/label_variants.json), none (the labels only), or an "
                        "(edited) label_variants.json")
    t.add_argument("--synonyms", metavar="CSV", help="a taxonomy of synonyms, columns attribute,value,synonym, added "
                                                     "to the learned variants")
    t.add_argument("--families", metavar="CSV|none",
                   help="value families (columns attribute,value,family): an answer whose value is not accepted "
                        "may be accepted at its family (default: attrx's colour families for an attribute most of "
                        "whose values are colour names; none: no families)")
    t.add_argument("--exclude-suspect-labels", metavar="FINDINGS",
                   help="leave the labels `attrx audit` found suspect (its --out JSONL) out of training and "
                        "calibration, as if missing")
    t.add_argument("--val-frac", type=float, help="validation fraction of the id-hash split (default 0.1)")
    t.add_argument("--test-frac", type=float, help="test fraction of the id-hash split (default 0.1)")
    t.add_argument("--seed", type=int, help="random seed")
    t.add_argument("--in-memory", action="store_true",
                   help="hold every decoded image in RAM (the demo-scale path); by default they go to a disk "
                        "store that batches read from, so memory does not grow with the catalog")
    t.add_argument("--image-cache", metavar="DIR",
                   help="keep the decoded images in DIR, keyed by the catalog and the preprocessing: a later run "
                        "on the same catalog skips decoding")
    t.add_argument("--workers", type=int,
                   help="DataLoader and image-decoding worker processes (default: cores - 1; 0: in this process)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="where to train (default auto: CUDA when torch sees a GPU, else the CPU)")
    t.add_argument("--amp", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision (default fp32); fp16 uses a GradScaler and needs CUDA; the "
                        "checkpoint's weights are fp32 either way")
    t.add_argument("--threads", type=int,
                   help="torch CPU threads (default: every core this process may use). On a machine shared with "
                        "another training, give each run its share, e.g. --threads 1 each on 2 cores")
    t.add_argument("--quiet", action="store_true", help="no progress bars")


def _pretrain_parser(sub) -> None:
    r = sub.add_parser("pretrain", help="self-supervised pre-training without labels: MoMo's three stages or "
                                        "SIMLA's tasks")
    from attrx.training.params import PretrainConfig

    r.add_argument("--family", help="the family to pre-train: momo or simla (default momo)")
    input_argument(r, "CSV, JSONL or Parquet with id, title, image (labels unused)")
    r.add_argument("--out", required=True, help="folder for the pre-trained encoder")
    r.add_argument("--config", help="momo-tiny (default for momo), momo-base, simla-tiny (default for simla), "
                                    "simla-small, simla-effnet or a JSON file")
    r.add_argument("--split", choices=["train", "val", "test"],
                   help="use only this id-hash split (e.g. train, to keep evaluation products unseen)")
    for st, what in ((1, "MIM"), (2, "MIM + MLM"), (3, "MLM + cross-modal masking + contrastive + matching")):
        r.add_argument(f"--stage{st}-steps", type=int, help=f"MoMo: steps of stage {st}: {what} (default 100; 0 skips)")
    r.add_argument("--steps", type=int, help="SIMLA: steps of its one stage, every task each step (default 300)")
    r.add_argument("--batch-size", type=int, help="default 32")
    r.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    r.add_argument("--mim-ratio", type=float, help="MoMo: masked share of patches (default 0.75)")
    r.add_argument("--xmm-ratio", type=float, help="SIMLA: blanked share of patches in cross-modality reconstruction "
                                                   "(default 0.5)")
    r.add_argument("--mlm-ratio", type=float, help="masked share of title tokens (default 0.15)")
    r.add_argument("--lock-image", action="store_true", help="SIMLA: keep a pretrained CNN image tower as it is")
    r.add_argument("--cmm-ratio", type=float, help="masked share of both in cross-modal masking (default 0.75)")
    r.add_argument("--modality-specific-layernorm", action="store_true", help="per-modality LayerNorms (MS-CLIP)")
    r.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    r.add_argument("--seed", type=int, help="random seed")
    r.add_argument("--threads", type=int, help="torch CPU threads (default: every core)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    model_defaults(r, PretrainConfig)
    r.set_defaults(func=cmd_pretrain)


def add_parsers(sub) -> None:
    _train_parser(sub)
    _pretrain_parser(sub)
