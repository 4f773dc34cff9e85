"""The rows acceptance is calibrated on: validation products as they are, and copies of them.

Silent titles and missing modalities are rare in a catalog's validation split, so the split is
copied three ways and the model's outputs on every copy are kept:
- per attribute, the products whose title names one of its labels, with those words removed (the
  attribute's situation becomes silent; the row counts for that attribute only), and once more with
  every attribute's label words removed at once (the row counts for every attribute);
- every product with an image, with its title dropped;
- every product with a title, with its image dropped.
Each row carries its situation per attribute, computed with the contract's matcher from the copy
as it is, so a copy lands in the situation a served product in its state would.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from attrx.service.contract.decisions import situation_index
from attrx.service.contract.label_variants import LabelSpellings
from attrx.service.contract.preprocess import encode_titles
from attrx.service.contract.situations import SituationReader, label_pattern, strip_pattern
from attrx.training.data.encode import Encoded
from attrx.training.evaluation.predict import predict_outputs

COPIES = ("natural", "strip", "strip_all", "no_title", "no_image")


@dataclass
class CalibrationSet:
    outputs: dict[str, list[np.ndarray]]  # "probs", "text", "image": per attribute [N, C]
    labels: np.ndarray  # [N, A]
    situations: np.ndarray  # [N, A] indices into SITUATIONS
    counts: np.ndarray  # [N, A] the row counts for the attribute (a strip copy counts for its own only)
    names_label: np.ndarray  # [N, A] the title names the product's catalog label
    copy: np.ndarray  # [N] which of COPIES the row is
    product: np.ndarray | None = None  # [N] the row's product: its index in the encoded data

    def take(self, rows: np.ndarray) -> CalibrationSet:
        """The rows selected by a mask or an index array."""
        return CalibrationSet({k: [o[rows] for o in v] for k, v in self.outputs.items()}, self.labels[rows],
                              self.situations[rows], self.counts[rows], self.names_label[rows], self.copy[rows],
                              None if self.product is None else self.product[rows])

    def __len__(self) -> int:
        return len(self.labels)


def _copy(data: Encoded, idx: np.ndarray, tok, *, titles=None, drop_image: bool = False) -> Encoded:
    """The rows idx, in memory, with new titles (None: dropped) and/or without their images."""
    arrays = {k: np.array(v) for k, v in data.take(idx).items()}
    products = [data.products[i] for i in idx]
    if titles is not None:
        arrays["input_ids"], arrays["attention_mask"] = encode_titles(tok, titles)
        arrays["text_present"] = np.asarray([t is not None for t in titles], dtype=np.float32)
        products = [replace(p, title=t) for p, t in zip(products, titles, strict=True)]
    if drop_image:
        arrays["pixel_values"][:] = 0.0
        arrays["image_present"][:] = 0.0
        products = [replace(p, image=None) for p in products]
    return Encoded(products, arrays, data.labels[idx], np.full(len(idx), "val"))


@dataclass
class _Matcher:
    reader: SituationReader  # each attribute's situation
    spellings: list[LabelSpellings]  # whether a title names a given value of each attribute


def _rows(model, enc: Encoded, attrs: list[str], m: _Matcher, copy: str, products: np.ndarray,
          only: int | None = None, features=None, source: np.ndarray | None = None) -> CalibrationSet:
    titles = [p.title for p in enc.products]
    has_image = enc.arrays["image_present"] > 0
    sits = np.array([situation_index(m.reader.read(t, bool(im))) for t, im in zip(titles, has_image, strict=True)],
                    dtype=np.int64).reshape(len(enc), len(attrs))
    counts = np.ones((len(enc), len(attrs)), dtype=bool)
    if only is not None:
        counts[:] = False
        counts[:, only] = True
    named = np.array([[sp.names(t, p.labels.get(a)) for a, sp in zip(attrs, m.spellings, strict=True)]
                      for t, p in zip(titles, enc.products, strict=True)], dtype=bool).reshape(len(enc), len(attrs))
    out = predict_outputs(model, enc, np.arange(len(enc)), features=features, source=source)
    return CalibrationSet(out, enc.labels, sits, counts, named, np.full(len(enc), COPIES.index(copy)),
                          np.asarray(products))


def concat(parts: list[CalibrationSet]) -> CalibrationSet:
    outs = {k: [np.concatenate([p.outputs[k][j] for p in parts]) for j in range(len(parts[0].outputs[k]))]
            for k in parts[0].outputs}
    cat = [np.concatenate([getattr(p, f) for p in parts]) for f in ("labels", "situations", "counts",
                                                                     "names_label", "copy", "product")]
    return CalibrationSet(outs, *cat)


def calibration_set(model, data: Encoded, va: np.ndarray, tok, label_words: dict[str, list[str]],
                    copies: bool = True, features=None, variants: dict | None = None) -> CalibrationSet:
    """The validation rows va as they are, and (with `copies`) their three kinds of copies. With
    `features` (a locked tower's stored outputs) every copy that keeps its image reads them instead
    of running the tower again, and the image-dropped copy reads the tower's one output on the
    blank image it is served with. label_words: the matcher's words (labels and variants); variants:
    how titles spell each label, to tell whether a title names the product's own label."""
    attrs = list(label_words)
    match = _Matcher(SituationReader(label_words),
                     [LabelSpellings(list((variants or {}).get(a, {})), (variants or {}).get(a)) for a in attrs])
    patterns = [label_pattern(ws) for ws in label_words.values()]
    natural = _copy(data, va, tok)
    parts = [_rows(model, natural, attrs, match, "natural", va, features=features, source=va)]
    if not copies:
        return parts[0]
    titles = [p.title for p in natural.products]
    for j, pat in enumerate(patterns):
        stripped = [strip_pattern(t, pat) for t in titles]
        changed = np.array([s != t for s, t in zip(stripped, titles, strict=True)], dtype=bool)
        keep = changed & ((natural.arrays["image_present"] > 0) | np.array([s is not None for s in stripped]))
        if keep.any():
            enc = _copy(data, va[keep], tok, titles=[s for s, k in zip(stripped, keep, strict=True) if k])
            parts.append(_rows(model, enc, attrs, match, "strip", va[keep], only=j, features=features,
                               source=va[keep]))
    every = label_pattern([w for ws in label_words.values() for w in ws])
    stripped = [strip_pattern(t, every) for t in titles]
    keep = np.array([s != t for s, t in zip(stripped, titles, strict=True)], dtype=bool)
    keep &= (natural.arrays["image_present"] > 0) | np.array([s is not None for s in stripped])
    if keep.any():
        enc = _copy(data, va[keep], tok, titles=[s for s, k in zip(stripped, keep, strict=True) if k])
        parts.append(_rows(model, enc, attrs, match, "strip_all", va[keep], features=features, source=va[keep]))
    with_image, with_title = natural.arrays["image_present"] > 0, natural.arrays["text_present"] > 0
    if with_image.any():
        parts.append(_rows(model, _copy(data, va[with_image], tok, titles=[None] * int(with_image.sum())),
                           attrs, match, "no_title", va[with_image], features=features, source=va[with_image]))
    if with_title.any():
        enc = _copy(data, va[with_title], tok, drop_image=True)
        blank = None
        if features is not None:  # the locked tower's output on the blank image, once, not per row
            from attrx.training.data.features import BlankFeatures

            blank = BlankFeatures(model, enc.arrays["pixel_values"][:1])
        parts.append(_rows(model, enc, attrs, match, "no_image", va[with_title], features=blank))
    return concat(parts)
