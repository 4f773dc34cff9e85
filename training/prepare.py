"""A training run's inputs: the catalog read and split, the label maps, the tokenizer (given, the
pretrained CLIP's, or trained on the training titles), the model from the factory, and the encoded
catalog (images in a disk store, or in memory)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from attrx.service.catalog.reader import read_catalog, write_errors
from attrx.service.contract.families import read_families
from attrx.service.contract.label_variants import VARIANTS_FILE, matcher_words_of
from attrx.service.contract.preprocess import PreprocessConfig, load_tokenizer
from attrx.training.data import tokenizer
from attrx.training.data.encode import Encoded, encode_catalog, encode_catalog_on_disk, label_maps, split_of
from attrx.training.data.loader import default_threads
from attrx.training.data.variant_learning import learn_variants, read_synonyms, read_variants, write_variants
from attrx.training.distributed import Dist
from attrx.training.models.checkpoint import TOKENIZER
from attrx.training.models.factory import create_model, resolve_config
from attrx.training.params import TrainConfig


@dataclass
class Prepared:
    """What a run trains on: the encoded catalog, its splits, the model and the tokenizer."""

    model: torch.nn.Module
    pre: PreprocessConfig
    tok: object
    tok_file: Path
    data: Encoded
    classes: dict[str, list[str]]
    label_words: dict[str, list[str]]  # each attribute's labels (those seen in training)
    other_for: list[str]
    tr: np.ndarray
    va: np.ndarray
    errors: list
    catalog_file: Path | None = None  # the catalog's local file (a remote catalog's copy)
    label_variants: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # how titles spell the labels

    @property
    def matcher_words(self) -> dict[str, list[str]]:
        """Each attribute's labels and their variants: what the situations matcher matches."""
        return matcher_words_of(self.label_words, self.label_variants)


def _tokenizer(cfg: TrainConfig, out: Path, train_titles: list[str | None], dist: Dist):
    """Given, the pretrained CLIP's, or a WordPiece trained on the training titles (by rank 0;
    the other ranks read the file it writes)."""
    tok_file = out / TOKENIZER
    if not dist.main:
        dist.barrier()
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(tok_file)), tok_file
    try:
        return _make_tokenizer(cfg, tok_file, train_titles)
    finally:
        dist.barrier()


def _make_tokenizer(cfg: TrainConfig, tok_file: Path, train_titles: list[str | None]):
    src_tok = cfg.tokenizer or (str(Path(cfg.init_from) / TOKENIZER) if cfg.init_from else None)
    if src_tok:
        if not Path(src_tok).is_file():
            raise FileNotFoundError(f"tokenizer {src_tok} not found")
        tok_file.write_bytes(Path(src_tok).read_bytes())
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(tok_file)), tok_file
    raw = tokenizer.train_wordpiece(train_titles, cfg.vocab_size or resolve_config(cfg.config, cfg.family).vocab_size)
    tokenizer.save(raw, tok_file)
    return raw, tok_file


def _encode(cfg: TrainConfig, catalog, tok, pre, classes, other_for, out: Path, dist: Dist):
    """The catalog's model inputs: in memory, or with the images in a disk store (rank 0 decodes;
    under torchrun the others then read its store, through a cache in the output folder)."""
    split = {"val_frac": cfg.val_frac, "test_frac": cfg.test_frac, "other_for": other_for}
    if cfg.in_memory:
        return encode_catalog(catalog, tok, pre, classes, progress=cfg.progress and dist.main, **split)[:2]
    cache = cfg.image_cache or (str(out / ".image-cache") if dist.on else None)
    opts = {"catalog_file": catalog.path, "scratch": out, "cache_dir": cache, "workers": data_workers(cfg),
            "progress": cfg.progress and dist.main, **split}
    if not dist.main:
        dist.barrier()
    data, errors, warm = encode_catalog_on_disk(catalog, tok, pre, classes, **opts)
    if dist.main:
        dist.barrier()
        if warm:
            print(f"decoded images: warm cache in {cache}", flush=True)
    return data, errors


def data_workers(cfg: TrainConfig) -> int:
    return cfg.workers if cfg.workers is not None else max(0, default_threads() - 1)


def prepare(cfg: TrainConfig, out: Path, dist: Dist | None = None) -> tuple[Prepared, TrainConfig]:
    dist = dist or Dist()
    attrs = tuple(cfg.attributes)
    catalog = read_catalog(cfg.catalog, attrs, require_labels=True)
    if cfg.exclude_suspect_labels:
        n = drop_suspect_labels(catalog.products, cfg.exclude_suspect_labels)
        print(f"--exclude-suspect-labels: {n} labels left out of training and calibration", flush=True)
    train_products = [p for p in catalog.products if split_of(p.id, cfg.val_frac, cfg.test_frac) == "train"]
    if not train_products:
        raise ValueError(f"{cfg.catalog}: no usable product in the training split")
    classes = label_maps(train_products, attrs, cfg.min_class_count)
    other_for = [a for a in attrs if cfg.min_class_count and classes[a][-1] == "other"]
    # every label seen in training names its attribute, folded ones included
    label_words = {a: sorted({p.labels[a] for p in train_products if p.labels.get(a)} - {"other"}) for a in attrs}
    variants = run_variants(cfg, out, train_products, label_words, dist.main)
    if cfg.families not in (None, "none"):
        read_families(cfg.families, attrs)  # a bad file fails now, not after training
    raw_tok, tok_file = _tokenizer(cfg, out, [p.title for p in train_products], dist)
    model, pre = create_model(cfg, [len(classes[a]) for a in attrs], tokenizer.special_ids(raw_tok),
                             raw_tok.get_vocab_size())
    tok = load_tokenizer(tok_file, pre.max_text_len)
    data, img_errors = _encode(cfg, catalog, tok, pre, classes, other_for, out, dist)
    errors = sorted([*catalog.errors, *img_errors], key=lambda e: e.line)
    if dist.main:
        write_errors(errors, out / "catalog_errors.jsonl")
    tr, va = data.indices("train"), data.indices("val")
    if cfg.inputs != "both":  # single-modality baseline: train only on items that have that modality
        present = data.arrays["text_present" if cfg.inputs == "text" else "image_present"] > 0
        tr = tr[present[tr]]
        off = {k: 0.0 for k in ("modality_dropout", "silence_title") if getattr(cfg, k)}
        if off:
            print(f"--inputs {cfg.inputs}: {', '.join(off)} do not apply and are off")
            cfg = cfg.model_copy(update=off)
    print(f"catalog: {len(data)} products used ({len(tr)} train, {len(va)} val, {len(data.indices('test'))} test), "
          f"{len(errors)} rows skipped" + (f" (reasons in {out / 'catalog_errors.jsonl'})" if errors else ""))
    if len(va) == 0:
        raise ValueError("the validation split is empty; use a larger catalog or a larger --val-frac")
    return Prepared(model, pre, tok, tok_file, data, classes, label_words, other_for, tr, va, errors, catalog.path,
                    variants), cfg


def drop_suspect_labels(products, findings_file: str) -> int:
    """Blank the labels `attrx audit` found suspect (a findings JSONL: id, attribute), in place."""
    path = Path(findings_file)
    if not path.is_file():
        raise FileNotFoundError(f"--exclude-suspect-labels {path}: no such file (attrx audit --out writes it)")
    suspect = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                f = json.loads(line)
                suspect.add((str(f["id"]), f["attribute"]))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a finding of attrx audit ({type(e).__name__}: {e})") from None
    dropped = 0
    for p in products:
        for a in list(p.labels):
            if (p.id, a) in suspect and p.labels[a] is not None:
                p.labels[a] = None
                dropped += 1
    return dropped


def run_variants(cfg: TrainConfig, out: Path, train_products, label_words, write: bool) -> dict:
    """The run's label variants (--label-variants learn|none|FILE, --synonyms), written beside the
    checkpoint as label_variants.json for a person to read and edit."""
    if cfg.label_variants == "none":
        return {}
    if cfg.label_variants != "learn":
        src = Path(cfg.label_variants)
        folder = src.parent if src.name == VARIANTS_FILE else src
        variants = read_variants(folder)
        if variants is None:
            raise FileNotFoundError(f"--label-variants {cfg.label_variants}: no {VARIANTS_FILE} there")
        if write and folder.resolve() != out.resolve():
            (out / VARIANTS_FILE).write_text((folder / VARIANTS_FILE).read_text())
        return variants
    synonyms = read_synonyms(cfg.synonyms, list(label_words)) if cfg.synonyms else None
    doc = learn_variants(train_products, label_words, synonyms)
    if write:
        write_variants(out, doc)
    return doc["variants"]
