"""The image-only floor: a colour histogram of each image fed to a logistic regression.

    python benchmarks/colour_baseline.py --catalog ../shared/data/fashion-products/catalog.csv

No learned features: an 8x8x8 RGB histogram (512 bins, square-rooted) of the whole image, as
decoded by Pillow, and scikit-learn's multinomial logistic regression trained on the 80% training
split and scored on the same 10% test split (by id hash) as every attrx model. Raw labels, no
folding into `other`. Prints JSON: accuracy per attribute and the number of classes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BINS = 8


def colour_histogram(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.uint8).reshape(-1, 3) // (256 // BINS)
    idx = (a[:, 0].astype(np.int64) * BINS + a[:, 1]) * BINS + a[:, 2]
    h = np.bincount(idx, minlength=BINS**3).astype(np.float32)
    return np.sqrt(h / h.sum())


def run(catalog: str | Path, attributes: list[str]) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from attrx.service.catalog.reader import read_catalog
    from attrx.training.data.encode import split_of

    t0 = time.time()
    products = [p for p in read_catalog(catalog, tuple(attributes)).products if p.image is not None]
    feats = np.stack([colour_histogram(p.image) for p in products])
    split = np.array([split_of(p.id) for p in products])
    out = {"features": f"{BINS}x{BINS}x{BINS} RGB histogram, square-rooted", "attributes": {}}
    for a in attributes:
        y = np.array([p.labels.get(a) or "" for p in products])
        tr, te = (split == "train") & (y != ""), (split == "test") & (y != "")
        scaler = StandardScaler().fit(feats[tr])
        clf = LogisticRegression(max_iter=2000, C=0.5).fit(scaler.transform(feats[tr]), y[tr])
        acc = float((clf.predict(scaler.transform(feats[te])) == y[te]).mean())
        out["attributes"][a] = {"accuracy": round(acc, 4), "n_test": int(te.sum()), "classes": int(len(clf.classes_))}
    out["seconds"] = round(time.time() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default=str(ROOT.parent / "shared" / "data" / "fashion-products" / "catalog.csv"))
    ap.add_argument("--attributes", default="baseColour,articleType")
    a = ap.parse_args()
    print(json.dumps(run(a.catalog, a.attributes.split(",")), indent=2))


if __name__ == "__main__":
    main()
