"""One pinned output per model family (HF transformers' style): a tiny model of each family, built by
the factory from a fixed seed, trained for a few AdamW steps on a fixed synthetic batch, must give the
same probabilities and modality weights as when the values below were recorded (torch 2.13.0, CPU),
within a tolerance. A change to a family's layers, initialisation, loss or forward shows up here.

To record new values after an intended change: ATTRX_WRITE_GOLDEN=1 pytest tests/e2e/test_golden.py
(writes tests/e2e/golden.json; say why in the commit)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).with_name("golden.json")
TOLERANCE = 2e-4
SPECIAL = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
N_CLASSES = [3, 5]


def _options(family: str):
    from attrx.training.params import TrainConfig

    return TrainConfig(catalog="-", attributes=["a", "b"], out="-", family=family,
                       config=f"{family}-tiny" if family in ("momo", "simla") else "tiny")


def _batch(pre, gen: torch.Generator, n: int = 6) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 120, (n, pre.max_text_len), generator=gen)
    lengths = torch.randint(3, pre.max_text_len, (n,), generator=gen)
    pos = torch.arange(pre.max_text_len)[None]
    mask = (pos < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    ids[:, 0] = SPECIAL["bos_token_id"]
    ids[torch.arange(n), lengths - 1] = SPECIAL["eos_token_id"]
    return {"input_ids": ids, "attention_mask": mask,
            "pixel_values": torch.randn(n, 3, pre.image_size, pre.image_size, generator=gen),
            "text_present": torch.tensor([1.0, 1, 1, 1, 0, 1]), "image_present": torch.tensor([1.0, 1, 1, 1, 1, 0])}


def _run(family: str) -> dict[str, list[float]]:
    from attrx.training.models.factory import create_model
    from attrx.training.optim import adamw

    torch.manual_seed(0)
    model, pre = create_model(_options(family), N_CLASSES, SPECIAL, 128)
    gen = torch.Generator().manual_seed(1)
    batch = _batch(pre, gen)
    labels = torch.randint(0, 3, (6, 2), generator=gen)
    opt = adamw(model, list(model.parameters()), 1e-4, 1e-3)
    model.train()
    for _ in range(5):
        loss = sum(torch.nn.functional.cross_entropy(lg, labels[:, j]) for j, (lg, _w) in enumerate(model(**batch)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        outs = model(**batch)
    return {f"{kind}{j}": (torch.softmax(lg, -1) if kind == "probs" else w).flatten().tolist()
            for j, (lg, w) in enumerate(outs) for kind in ("probs", "weights")}


@pytest.mark.parametrize("family", ["cma-clip", "momo", "simla"])
def test_golden_output(family):
    got = _run(family)
    if os.environ.get("ATTRX_WRITE_GOLDEN"):
        doc = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        doc[family] = {k: [round(x, 6) for x in v] for k, v in got.items()}
        GOLDEN.write_text(json.dumps(doc, indent=1) + "\n")
        pytest.skip(f"recorded {family} in {GOLDEN}")
    want = json.loads(GOLDEN.read_text())[family]
    assert set(got) == set(want)
    for key in want:
        diff = float(np.max(np.abs(np.array(got[key]) - np.array(want[key]))))
        assert diff <= TOLERANCE, f"{family} {key}: max |diff| {diff:.2e} > {TOLERANCE:g}"
    # the missing-modality contract holds in the pinned numbers too: item 4 has no title, item 5 no image
    w = np.array(want["weights0"]).reshape(6, 2)
    assert w[4].tolist() == [0.0, 1.0] and w[5].tolist() == [1.0, 0.0]
