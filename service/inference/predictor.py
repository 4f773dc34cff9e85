"""From raw product to answer: decode one request into model inputs, batch items, encode a model output row.

Shared by the HTTP service and `attrx score`, so both give the same answer for the same product.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from attrx.service.contract.bundle import Bundle, precision_key
from attrx.service.contract.preprocess import (
    ImageError,
    build_inputs,
    load_image_array,
    load_tokenizer,
    normalise_title,
)


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
                 max_image_aspect: float | None = None):
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

    def decode_request(self, title: str | None, image: bytes | str | os.PathLike | None) -> dict[str, np.ndarray]:
        """One product -> model inputs with batch size 1. Raises InputError or ImageError."""
        title = normalise_title(title)
        if title is not None and len(title) > self.max_title_chars:
            raise InputError("title_too_long",
                             f"title has {len(title):,} characters; the limit is {self.max_title_chars:,}")
        if image is not None and isinstance(image, bytes) and not image:
            image = None
        if title is None and image is None:
            raise InputError("empty", "a product needs a title or an image (neither was given)")
        arr = load_image_array(image, self.preprocess) if image is not None else None
        return build_inputs(self.tokenizer, [title], [arr], self.preprocess)

    def precision_key(self, min_precision: float | None) -> str:
        if min_precision is None:
            return self.targets[0]
        key = precision_key(min_precision)
        if key not in self.targets:
            raise InputError("bad_option", f"min_precision {min_precision} is not calibrated in this bundle; "
                                           f"use one of {', '.join(self.targets)}")
        return key

    def encode_response(self, outputs: Sequence[np.ndarray], i: int, *, key: str, top_k: int = 1) -> dict[str, dict]:
        """Row i of a batch's outputs -> per attribute value, confidence, top-k, weights, threshold."""
        result = {}
        for j, attr in enumerate(self.manifest.attributes):
            # plain Python on small rows: numpy's per-call overhead dominated this on the event loop
            probs, (w_text, w_image) = outputs[2 * j][i].tolist(), outputs[2 * j + 1][i].tolist()
            order = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)
            c = order[0]
            conf = probs[c]
            thr = attr.thresholds[key][c]
            top = order[: max(1, min(top_k, len(attr.classes)))]
            result[attr.name] = {
                "value": attr.classes[c],
                "confidence": conf,
                "top_k": [{"value": attr.classes[t], "probability": probs[t]} for t in top],
                "modality_weights": {"text": w_text, "image": w_image},
                "threshold": thr,
                "accepted": thr is not None and conf >= thr,
            }
        return result


__all__ = ["ImageError", "InputError", "Predictor", "batch_inputs"]
