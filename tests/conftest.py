"""Session fixtures: a real demo catalog, a real tiny CMA-CLIP checkpoint and a real bundle.

Built once per test session through the same functions the `attrx` CLI calls.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ATTRS = ["category", "colour", "pattern", "gender"]


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory) -> Path:
    from training.demo import write_demo_catalog

    return write_demo_catalog(tmp_path_factory.mktemp("demo"), n=240, seed=7, progress=False)


@pytest.fixture(scope="session")
def checkpoint(demo_catalog, tmp_path_factory) -> Path:
    from training.evaluate import evaluate
    from training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    cfg = TrainConfig(catalog=str(demo_catalog), attributes=ATTRS, out=str(out), config="tiny",
                      warmup_epochs=1, e2e_epochs=2, tune_epochs=1, batch_size=32, val_frac=0.2, test_frac=0.2,
                      threads=2, progress=False)
    train(cfg)
    evaluate(out, demo_catalog, progress=False, min_positives=1)
    return out


@pytest.fixture(scope="session")
def bundle(checkpoint, tmp_path_factory) -> Path:
    from export.bundle import export_bundle

    return export_bundle(checkpoint, tmp_path_factory.mktemp("bundle") / "tiny-bundle", name="tiny-test")
