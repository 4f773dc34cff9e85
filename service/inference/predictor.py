"""From raw product to answer: decode one request into model inputs, batch items, encode a model output row.

Shared by the HTTP service and `attrx score`, so both give the same answer for the same product.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from attrx.service.contract.bundle import CONCEPT_OUTPUTS, Bundle, output_names, precision_key
from attrx.service.contract.decisions import REVIEW_REASONS, decide_one, rules_from_manifest, situation_index
from attrx.service.contract.drift_stats import decode_product
from attrx.service.contract.preprocess import (
    ImageError,
    load_tokenizer,
    normalise_title,
)
from attrx.service.contract.situations import SituationReader

DECISIONS = ("full", "plain")


class InputError(ValueError):
    """A product the model cannot take (reason: empty, title_too_long, bad_option)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def batch_inputs(items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate prepared single items (each [1, ...]) into one batch."""
    return {k: np.concatenate([it[k] for it in items]) for k in items[0]}


class Predictor:
    """The bundle's preprocessing and postprocessing around any runtime backend."""

    def __init__(self, bundle: Bundle, *, max_title_chars: int = 2000, max_image_pixels: int | None = None,
                 max_image_aspect: float | None = None, decisions: str = "full"):
        self.bundle = bundle
        self.manifest = bundle.manifest
        pre = self.manifest.preprocess
        limits = {"max_image_pixels": max_image_pixels, "max_image_aspect": max_image_aspect}
        pre = pre.model_copy(update={k: v for k, v in limits.items() if v is not None})
        self.preprocess = pre
        self.tokenizer = load_tokenizer(bundle.tokenizer_path, pre.max_text_len)
        self.max_title_chars = max_title_chars
        self.attributes = [a.name for a in self.manifest.attributes]
        self.targets = [precision_key(t) for t in self.manifest.precision_targets]
        if decisions not in DECISIONS:
            raise ValueError(f"decisions must be one of {DECISIONS}, got {decisions!r}")
        full = decisions == "full"
        self.rules, self.decoder = rules_from_manifest(self.manifest, situations=full, conflicts=full, constraints=full)
        self.read_situations = SituationReader.of_attributes(self.manifest.attributes)
        where = {n: i for i, n in enumerate(self.manifest.model.outputs)}
        uni = self.manifest.model.unimodal
        self._cols = [[where[n] for n in output_names(a, uni)] for a in self.attributes]
        self._concepts = [where[n] for n in CONCEPT_OUTPUTS] if self.manifest.model.concepts else None

    def situations(self, title: str | None, image) -> list[str]:
        """Per attribute, the product's situation (see attrx.service.contract.situations)."""
        return self.read_situations(title, image)

    def decode_request(self, title: str | None, image: bytes | str | os.PathLike | None) -> dict[str, np.ndarray]:
        """One product -> model inputs with batch size 1, and its drift profile under PROFILE_KEY
        (which backends ignore). Raises InputError or ImageError."""
        return self.prepare(title, image)[0]

    def prepare(self, title: str | None, image: bytes | str | os.PathLike | None
                ) -> tuple[dict[str, np.ndarray], list[str]]:
        """decode_request, and the product's situation per attribute."""
        title = normalise_title(title)
        if title is not None and len(title) > self.max_title_chars:
            raise InputError("title_too_long",
                             f"title has {len(title):,} characters; the limit is {self.max_title_chars:,}")
        if image is not None and isinstance(image, bytes) and not image:
            image = None
        if title is None and image is None:
            raise InputError("empty", "a product needs a title or an image (neither was given)")
        return decode_product(self.tokenizer, self.preprocess, self.read_situations, title, image)

    def precision_key(self, min_precision: float | None) -> str:
        if min_precision is None:
            return self.targets[0]
        key = precision_key(min_precision)
        if key not in self.targets:
            raise InputError("bad_option", f"min_precision {min_precision} is not calibrated in this bundle; "
                                           f"use one of {', '.join(self.targets)}")
        return key

    def encode_response(self, outputs: Sequence[np.ndarray], i: int, *, key: str, situations: Sequence[str],
                        top_k: int = 1) -> dict[str, dict]:
        """Row i of a batch's outputs -> per attribute value, confidence, top-k, weights, situation,
        threshold, acceptance and the reasons for review."""
        cols = self._cols
        uni = len(cols[0]) == 4
        probs = [outputs[c[0]][i] for c in cols]
        rows = [p.tolist() for p in probs]  # plain Python on small rows: numpy's per-call cost dominated
        answers = decide_one(self.rules, self.decoder, probs, situation_index(situations), key,
                             [outputs[c[2]][i] for c in cols] if uni else None,
                             [outputs[c[3]][i] for c in cols] if uni else None, rows=rows)
        result = {}
        for j, (rule, (c, conf, thr, why, conflict, constrained)) in enumerate(zip(self.rules, answers, strict=True)):
            p, (w_text, w_image) = rows[j], outputs[cols[j][1]][i].tolist()
            top = sorted(range(len(p)), key=p.__getitem__, reverse=True)[: max(1, min(top_k, len(p)))]
            result[rule.name] = {
                "value": rule.classes[c], "confidence": conf,
                "top_k": [{"value": rule.classes[t], "probability": p[t]} for t in top],
                "modality_weights": {"text": w_text, "image": w_image},
                "situation": situations[j], "threshold": thr, "accepted": why < 0, "conflict": conflict,
                "constrained": constrained, "review": None if why < 0 else REVIEW_REASONS[why],
            }
            if conflict:
                result[rule.name]["conflict_values"] = {
                    "title_says": rule.classes[int(outputs[cols[j][2]][i].argmax())],
                    "image_says": rule.classes[int(outputs[cols[j][3]][i].argmax())]}
        return result

    def evidence(self, outputs: Sequence[np.ndarray], i: int) -> dict | None:
        """Row i's title words with how strongly the image alone supports each (a word split into
        pieces scores their mean), most supported first; None without a concept head or an image."""
        if self._concepts is None:
            return None
        scores, ids = (outputs[c][i] for c in self._concepts)
        if not scores.any():
            return None  # no image (or no title word): nothing for the image to back
        words: list[list] = []
        for tid, sc in zip(ids.tolist(), scores.tolist(), strict=True):
            if sc <= 0.0:
                continue  # padding and special tokens score exactly 0
            tok = self.tokenizer.id_to_token(int(tid)) or ""
            if tok.startswith("##") and words:
                words[-1][0] += tok[2:]
                words[-1][1].append(sc)
            else:
                words.append([tok, [sc]])
        best: dict[str, float] = {}
        for w, sc in words:
            best[w] = max(best.get(w, 0.0), sum(sc) / len(sc))
        ranked = sorted(best.items(), key=lambda kv: kv[1], reverse=True)
        return {"image_backs": [{"word": w, "score": round(s, 4)} for w, s in ranked]}


__all__ = ["ImageError", "InputError", "Predictor", "batch_inputs"]
