"""Training-time augmentation: silent titles and colour-preserving image transforms.

Label-word removal teaches a multimodal model that a *present* title can be silent about an
attribute. With probability p per attribute and item, every whole word (or phrase) that names one
of the attribute's labels is removed from the title, case-insensitively, longest label first, so
"navy blue" goes before "blue". The matcher is the contract's (attrx.service.contract.situations):
`attrx eval --strip-label-words`, calibration and the served situations use the very same matching.

Image augmentation changes geometry only (random scale/translate crop, horizontal flip), never
hue or brightness: colour is one of the attributes being learned.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from attrx.service.contract.preprocess import encode_titles
from attrx.service.contract.situations import label_pattern, strip_pattern


class TitleSilencer:
    """Per batch: for each item and attribute, with probability p, remove that attribute's label
    words from the title and re-tokenise the changed titles."""

    def __init__(self, label_words: dict[str, Sequence[str]], p: float, tokenizer, seed: int = 0):
        self.patterns = [label_pattern(ws) for ws in label_words.values()]
        self.p = p
        self.tok = tokenizer
        self.seed = seed + 7919
        self.rng = np.random.default_rng(self.seed)

    def rng_for(self, key: tuple[int, ...]) -> np.random.Generator:
        """The generator of one batch (epoch, batch number): the same draws whichever loader worker
        process silences it, so runs stay reproducible at any --workers."""
        return np.random.default_rng([self.seed, *key])

    def __call__(self, titles: Sequence[str | None], batch: dict[str, torch.Tensor],
                 rng: np.random.Generator | None = None) -> int:
        """Edit batch["input_ids"/"attention_mask"/"text_present"] in place; returns the count changed."""
        if self.p <= 0 or not titles:
            return 0
        hit = (rng or self.rng).random((len(titles), len(self.patterns))) < self.p
        changed, new = [], []
        for i, t in enumerate(titles):
            if not t or not hit[i].any() or batch["text_present"][i] <= 0:
                continue
            s = t
            for j in np.flatnonzero(hit[i]):
                s = strip_pattern(s, self.patterns[j])
            if s != t:
                changed.append(i)
                new.append(s)
        if changed:
            ids, mask = encode_titles(self.tok, new)
            idx = torch.as_tensor(changed)
            batch["input_ids"][idx] = torch.from_numpy(ids)
            batch["attention_mask"][idx] = torch.from_numpy(mask)
            gone = torch.as_tensor([s is None for s in new])
            batch["text_present"][idx[gone]] = 0.0  # a title made only of label words is no title
        return len(changed)


def augment_images(pixels: torch.Tensor, present: torch.Tensor, gen: torch.Generator,
                   scale: tuple[float, float] = (0.75, 1.0), max_shift: float = 0.1, flip: bool = True) -> torch.Tensor:
    """Random zoom-in crop, shift and horizontal flip of normalised images [B, 3, S, S], batched
    through one affine grid; colour values are only interpolated, never changed. Absent images
    (present == 0) are returned as they were. Runs where `pixels` are (the GPU in training on
    CUDA), drawing from `gen`, which must be on that device."""
    b, dev = pixels.shape[0], pixels.device
    if b == 0:
        return pixels
    s = torch.empty(b, device=dev).uniform_(scale[0], scale[1], generator=gen)
    tx = torch.empty(b, device=dev).uniform_(-max_shift, max_shift, generator=gen)
    ty = torch.empty(b, device=dev).uniform_(-max_shift, max_shift, generator=gen)
    ones = torch.ones(b, device=dev)
    sign = torch.where(torch.rand(b, generator=gen, device=dev) < 0.5, -ones, ones) if flip else ones
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = s * sign
    theta[:, 1, 1] = s
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta.to(pixels.dtype), list(pixels.shape), align_corners=False)
    out = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    keep = (present > 0).view(b, 1, 1, 1)
    return torch.where(keep, out, pixels)
