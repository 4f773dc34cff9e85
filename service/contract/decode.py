"""decode_request's work on one product: its title and image -> the model's inputs (batch size 1), its
drift profile and its situation per attribute. The one decoding path of serving, scoring and the drift
reference that export records, so the same product decodes alike everywhere."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from tokenizers import Tokenizer

from attrx.service.contract.decisions import situation_index
from attrx.service.contract.drift_stats import PROFILE_KEY, profile
from attrx.service.contract.preprocess import (
    IMAGE_FORMATS,
    ImageSource,
    PreprocessConfig,
    build_inputs,
    image_to_array,
    open_image,
)
from attrx.service.contract.situations import SITUATIONS, SituationReader


class Decoded(NamedTuple):
    """A decoded product: the model's inputs (with its profile under PROFILE_KEY, which backends
    ignore) and its situation per attribute."""

    inputs: dict[str, np.ndarray]
    situations: list[str]


def decode_product(tokenizer: Tokenizer, pre: PreprocessConfig, reader: SituationReader, title: str | None,
                   image: ImageSource | None, formats: tuple[str, ...] = IMAGE_FORMATS) -> Decoded:
    """One product, its title normalised and checked to have a title or an image."""
    img = open_image(image, pre, formats) if image is not None else None
    arr = image_to_array(img, pre) if img is not None else None
    inputs = build_inputs(tokenizer, [title], [arr], pre)
    situations = reader.read(title, img is not None)
    inputs[PROFILE_KEY] = profile(situation_index(situations), title, img.size if img is not None else None, arr)
    return Decoded(inputs, situations)


def situations_of(profile: np.ndarray, attributes: int) -> list[str]:
    """A decoded product's situation per attribute, read back from its profile ([1, attributes + 3])."""
    return [SITUATIONS[int(i)] for i in profile[0, :attributes]]
