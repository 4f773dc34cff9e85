"""Fixtures for the three test tiers, which are folders:

  tests/unit         functions and small objects: no bundle, no server, no training
  tests/integration  real bundles, servers, processes and files, built from an *untrained* model
  tests/e2e          everything that trains a model (marker `slow`), and the installed wheel

A test's tier is its folder (marked at collection), never a guess from its source. Fixtures that
train carry `@trains`; a unit or integration test that asks for one is an error at collection, and
calling `train` or `pretrain` from those tiers fails at once with where the test belongs.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from helpers import ATTRS, server_factory, untrained_checkpoint

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e")


def trains(fixture_fn):
    """Mark a fixture function as one that trains a model (e2e only)."""
    fixture_fn._attrx_trains = True
    return fixture_fn


def pytest_configure(config):
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: a test in tests/{tier}/")
    config.addinivalue_line("markers", "slow: trains a model (every test in tests/e2e/)")


def _tier(item) -> str:
    rel = Path(str(item.fspath)).resolve().relative_to(TESTS)
    if rel.parts[0] not in TIERS:
        raise pytest.UsageError(f"{rel}: tests live in tests/unit, tests/integration or tests/e2e")
    return rel.parts[0]


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = _tier(item)
        item.add_marker(getattr(pytest.mark, tier))
        if tier == "e2e":
            item.add_marker(pytest.mark.slow)
            continue
        info = getattr(item, "_fixtureinfo", None)
        for name, defs in (info.name2fixturedefs.items() if info else ()):
            if any(getattr(d.func, "_attrx_trains", False) for d in defs):
                raise pytest.UsageError(f"{item.nodeid} uses the fixture {name!r}, which trains a model: "
                                        "the test belongs in tests/e2e")


@pytest.fixture(autouse=True)
def _no_training_outside_e2e(request, monkeypatch):
    if _tier(request.node) == "e2e":
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} trains a model: move it to tests/e2e (or build an "
                             "untrained model with helpers.untrained_checkpoint)")

    import attrx.training.loop as loop_mod
    import attrx.training.pretrain as pretrain_mod

    # the stage runners, looked up when a stage starts: however the test reached `train` (or `improve`)
    monkeypatch.setattr(loop_mod, "run_stage", refuse)
    monkeypatch.setattr(pretrain_mod, "_run_stage", refuse)


# -- data ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory) -> Path:
    from attrx.training.data.demo import write_demo_catalog

    return write_demo_catalog(tmp_path_factory.mktemp("demo"), n=240, seed=7, progress=False)


@pytest.fixture(scope="session")
def product_images(demo_catalog) -> list[bytes]:
    from attrx.service.catalog.reader import read_catalog

    return [p.image.read_bytes() for p in read_catalog(demo_catalog).products if p.image][:64]


@pytest.fixture()
def messy_catalog(demo_catalog, tmp_path) -> Path:
    """Demo products plus a corrupt image, a missing image file and a row with neither title nor image."""
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows = list(csv.DictReader(open(demo_catalog)))[:40]
    img_dir = demo_catalog.parent
    p = tmp_path / "score-me.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "image"])
        for r in rows[:20]:
            w.writerow([r["id"], r["title"], str(img_dir / r["image"]) if r["image"] else ""])
        w.writerow(["bad-corrupt", "Some Tee", "corrupt.jpg"])     # line 22
        w.writerow(["bad-missing", "", "no/such/file.jpg"])       # line 23
        w.writerow(["bad-empty", "", ""])                          # line 24
        for r in rows[20:]:
            w.writerow([r["id"], r["title"], str(img_dir / r["image"]) if r["image"] else ""])
    return p


# -- untrained model: seconds to build, for the contract, HTTP and reliability tests ---------------
@pytest.fixture(scope="session")
def checkpoint(demo_catalog, tmp_path_factory) -> Path:
    """A checkpoint folder as `attrx train` writes one, with random weights and a written calibration."""
    return untrained_checkpoint(demo_catalog, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def bundle(checkpoint, tmp_path_factory) -> Path:
    from attrx.export.build import export_bundle

    return export_bundle(checkpoint, tmp_path_factory.mktemp("bundle") / "tiny-bundle", name="tiny-test").path


@pytest.fixture
def start_server(bundle):
    """Servers for one test, stopped when it ends: each is 4 processes and their shared memory."""
    start, servers = server_factory(bundle)
    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def server(bundle):
    """A default server shared by the tests that do not change its settings."""
    start, servers = server_factory(bundle)
    yield start(max_queue_delay_ms=20, max_body_bytes=2 * 1024 * 1024)
    for s in servers:
        s.stop()


# -- trained model: e2e only -----------------------------------------------------------------------
@pytest.fixture(scope="session")
@trains
def trained_checkpoint(demo_catalog, tmp_path_factory) -> Path:
    from attrx.training.evaluation.evaluate import evaluate
    from attrx.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("trained") / "tiny"
    cfg = TrainConfig(catalog=str(demo_catalog), attributes=ATTRS, out=str(out), config="tiny",
                      warmup_epochs=1, e2e_epochs=2, tune_epochs=1, batch_size=32, val_frac=0.2, test_frac=0.2,
                      threads=2, progress=False)
    train(cfg)
    evaluate(out, demo_catalog, progress=False, min_positives=1)
    return out


@pytest.fixture(scope="session")
@trains
def trained_bundle(trained_checkpoint, tmp_path_factory) -> Path:
    from attrx.export.build import export_bundle

    return export_bundle(trained_checkpoint, tmp_path_factory.mktemp("trained-bundle") / "tiny-bundle",
                         name="tiny-test").path



# -- a real browser: headless Chromium from Debian's packages, driven by Selenium -------------------
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) drives the browser")
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,720", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()
