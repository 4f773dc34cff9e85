"""The audit's near-duplicate search finds exactly the pairs a brute-force comparison finds, and
training leaves out the labels a findings file names."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from attrx.service.catalog.reader import Product
from attrx.service.scoring.audit import NEAR_BITS, _near_pairs
from attrx.training.prepare import drop_suspect_labels


def test_near_pairs_are_the_brute_force_pairs():
    rng = random.Random(0)
    base = [rng.getrandbits(64) for _ in range(40)]
    hashes = []
    for h in base:  # each hash, and copies with 1..6 bits flipped
        hashes.append(h)
        for flips in (1, 3, NEAR_BITS, NEAR_BITS + 2):
            x = h
            for b in rng.sample(range(64), flips):
                x ^= 1 << b
            hashes.append(x)
    keys = [(f"sha{i}", h, None) for i, h in enumerate(hashes)] + [(None, None, None)]
    brute = {(i, k) for i in range(len(hashes)) for k in range(i + 1, len(hashes))
             if bin(hashes[i] ^ hashes[k]).count("1") <= NEAR_BITS}
    assert _near_pairs(keys) == brute and brute
    # and the thumbnails must agree: a photo shot alike is not the same photo
    a, b = np.zeros((16, 16, 3), np.float32), np.full((16, 16, 3), 0.003, np.float32)
    close = [("x", 0, a), ("y", 1, b), ("z", 3, a + 0.05)]
    assert _near_pairs(close) == {(0, 1)}


def test_suspect_labels_are_left_out(tmp_path):
    products = [Product("a", "t", None, {"colour": "Red", "type": "Shirts"}), Product("b", "t", None, {"colour": "Blue"})]
    f = tmp_path / "findings.jsonl"
    f.write_text(json.dumps({"id": "a", "attribute": "colour"}) + "\n" + json.dumps({"id": "b", "attribute": "type"}) + "\n")
    assert drop_suspect_labels(products, str(f)) == 1
    assert products[0].labels == {"colour": None, "type": "Shirts"} and products[1].labels == {"colour": "Blue"}
    f.write_text("not json\n")
    with pytest.raises(ValueError, match="not a finding"):
        drop_suspect_labels(products, str(f))
    with pytest.raises(FileNotFoundError, match="attrx audit"):
        drop_suspect_labels(products, str(tmp_path / "missing.jsonl"))
