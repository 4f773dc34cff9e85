"""`attrx train` on a catalog whose images are URLs on a real image server on 127.0.0.1: the same
checkpoint as from local files with the same seed, and a second run asks for no unchanged image.

The runs share one tokenizer file: the WordPiece trainer of `tokenizers` breaks ties between equally
frequent merges in a hash map's order, which differs from process to process, so two runs that train
their own tokenizer differ whatever their images."""

from __future__ import annotations

import csv
from pathlib import Path

from helpers import ImageHost

from attrx.cli import main

FAST = ["--attributes", "colour,gender", "--warmup-epochs", "1", "--e2e-epochs", "1", "--tune-epochs", "0",
        "--quiet", "--threads", "2", "--val-frac", "0.2", "--test-frac", "0.2", "--seed", "3"]


def _url_catalog(demo_catalog: Path, base: str, out: Path) -> Path:
    rows = list(csv.DictReader(open(demo_catalog)))
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "image": f"{base}/{r['image']}" if r["image"] else ""})
    return out


def _weights(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


def test_training_on_urls_writes_the_same_weights_and_refetches_nothing(demo_catalog, tmp_path, monkeypatch):
    from attrx.training.data.tokenizer import save, train_wordpiece

    monkeypatch.setenv("ATTRX_CACHE_DIR", str(tmp_path / "cache"))
    save(train_wordpiece(r["title"] for r in csv.DictReader(open(demo_catalog))), tmp_path / "tokenizer.json")
    fast = [*FAST, "--tokenizer", str(tmp_path / "tokenizer.json")]
    host = ImageHost(demo_catalog.parent, max_age=3600)
    try:
        remote = _url_catalog(demo_catalog, host.url, tmp_path / "remote.csv")
        main(["train", str(demo_catalog), "--out", str(tmp_path / "local"), *fast])
        main(["train", str(remote), "--out", str(tmp_path / "remote"), "--image-cache", str(tmp_path / "store"),
              *fast])
        first = host.stats()
        host.reset()
        main(["train", str(remote), "--out", str(tmp_path / "again"), "--image-cache", str(tmp_path / "store"),
              *fast])
        second = host.stats()
    finally:
        host.stop()
    assert _weights(tmp_path / "remote") == _weights(tmp_path / "local") == _weights(tmp_path / "again")
    with_image = sum(1 for r in csv.DictReader(open(demo_catalog)) if r["image"])
    assert first["ok"] == with_image and second.get("requests", 0) == 0
