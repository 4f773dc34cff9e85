"""What a concept head (SIMLA's) says from the image alone, measured on the evaluated rows.

For the colour attribute (the first whose name says colour or color), every class but `other` is a
colour *word* (a phrase of one or more tokens scores the mean of its tokens' concept logits). Per
product with an image and a labelled colour among them, the concept head ranks all of those words
from the image alone; `rank1` is the share whose true colour comes first. Ranking among all the
catalog's colours, not among the title's own words: most titles name one colour, so the latter
would be no test. The figure shows, per colour, how often the image itself backs it first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attrx.training.evaluation.predict import model_batches


def colour_attribute(attributes: list[str]) -> str | None:
    return next((a for a in attributes if "colour" in a.lower() or "color" in a.lower()), None)


def colour_words(classes: list[str], tokenizer) -> tuple[list[int], list[list[int]]]:
    """(class indices, their token ids) for the classes that are words of the vocabulary."""
    unk = tokenizer.token_to_id("[UNK]")
    keep, ids = [], []
    for c, name in enumerate(classes):
        if name == "other":
            continue
        enc = tokenizer.encode(name, add_special_tokens=False)
        toks = [t for t, m in zip(enc.ids, enc.attention_mask, strict=True) if m]  # the loaded one pads
        if toks and unk not in toks:
            keep.append(c)
            ids.append(toks)
    return keep, ids


@torch.no_grad()
def concept_logits(model, data, idx: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    parts = [model.concept_logits(b["pixel_values"]).float().cpu().numpy() for b in model_batches(model, data, idx,
                                                                                             batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.cfg.vocab_size), np.float32)


def concept_report(model, tokenizer, data, idx: np.ndarray, attributes: list[str], classes: dict[str, list[str]],
                   out: Path) -> dict | None:
    """{attribute, words, products, rank1, per_colour} and concepts_<attribute>.png, or None when
    the model has no concept head or the catalog no colour attribute."""
    attr = colour_attribute(attributes)
    if attr is None or not hasattr(model, "concept_logits"):
        return None
    j = attributes.index(attr)
    keep, word_ids = colour_words(classes[attr], tokenizer)
    has_image = data.arrays["image_present"][idx] > 0
    labels = data.labels[idx, j]
    rows = has_image & np.isin(labels, keep)
    logits = concept_logits(model, data, idx[rows])
    scores = np.stack([logits[:, ids].mean(1) for ids in word_ids], 1) if len(logits) else np.zeros((0, len(keep)))
    picked = np.asarray(keep)[scores.argmax(1)] if len(scores) else np.zeros(0, int)
    truth = labels[rows]
    per = {classes[attr][c]: {"products": int((truth == c).sum()),
                              "rank1": float((picked[truth == c] == c).mean()) if (truth == c).any() else None}
           for c in keep}
    report = {"attribute": attr, "words": len(keep), "classes": len(classes[attr]),
              "products": int(rows.sum()), "coverage": float(rows.mean()) if len(rows) else 0.0,
              "rank1": float((picked == truth).mean()) if len(truth) else None, "per_colour": per}
    _plot(out / f"concepts_{attr}.png", attr, per, report["rank1"])
    return report


def _plot(path: Path, attr: str, per: dict, overall: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(((k, v) for k, v in per.items() if v["rank1"] is not None), key=lambda kv: -kv[1]["products"])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(items) + 2), 3.6), dpi=100)
    ax.bar(range(len(items)), [v["rank1"] for _, v in items], color="#4c72b0")
    ax.set_xticks(range(len(items)), [f"{k} ({v['products']})" for k, v in items], rotation=70, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("image backs it first")
    ax.set_title(f"{attr}: the concept head, image alone, ranks the true colour first"
                 + (f" (all: {overall:.3f})" if overall is not None else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
