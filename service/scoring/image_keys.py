"""What the audit keeps of an image: enough to find the same photo again, never the bytes.

- sha256 of the bytes: the very same file;
- a 64-bit difference hash (9x8 grey, each pixel brighter than its right neighbour): the same photo
  re-encoded or resized, within a few bits;
- a 16x16 RGB thumbnail (0-1): the check that the hash did not match two products shot alike on white.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np


def dhash(data: bytes) -> int | None:
    """A 64-bit difference hash of an image (9x8 grey, each pixel brighter than its right neighbour)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            g = np.asarray(im.convert("L").resize((9, 8)), dtype=np.int16)
    except (OSError, ValueError):
        return None
    bits = (g[:, 1:] > g[:, :-1]).ravel()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def thumbnail(data: bytes) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB").resize((16, 16)), dtype=np.float32) / 255.0
    except (OSError, ValueError):
        return None


def image_key(data: bytes | None) -> tuple:
    """(sha256 of the image bytes, their difference hash, their thumbnail); Nones without an image."""
    return (hashlib.sha256(data).hexdigest(), dhash(data), thumbnail(data)) if data else (None, None, None)
