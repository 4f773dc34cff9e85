"""Session fixtures: a real demo catalog, a real tiny CMA-CLIP checkpoint and a real bundle.

Built once per test session through the same functions the `attrx` CLI calls.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

ATTRS = ["category", "colour", "pattern", "gender"]


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory) -> Path:
    from attrx.training.demo import write_demo_catalog

    return write_demo_catalog(tmp_path_factory.mktemp("demo"), n=240, seed=7, progress=False)


@pytest.fixture(scope="session")
def checkpoint(demo_catalog, tmp_path_factory) -> Path:
    from attrx.training.evaluate import evaluate
    from attrx.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    cfg = TrainConfig(catalog=str(demo_catalog), attributes=ATTRS, out=str(out), config="tiny",
                      warmup_epochs=1, e2e_epochs=2, tune_epochs=1, batch_size=32, val_frac=0.2, test_frac=0.2,
                      threads=2, progress=False)
    train(cfg)
    evaluate(out, demo_catalog, progress=False, min_positives=1)
    return out


@pytest.fixture(scope="session")
def bundle(checkpoint, tmp_path_factory) -> Path:
    from attrx.export.build import export_bundle

    return export_bundle(checkpoint, tmp_path_factory.mktemp("bundle") / "tiny-bundle", name="tiny-test").path


class Server:
    """A real `attrx serve` process on 127.0.0.1."""

    def __init__(self, bundle: Path, wait_ready: bool = True, env: dict | None = None, **settings):
        import os
        import socket
        import subprocess
        import sys

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        exe = str(Path(sys.executable).parent / "attrx")
        args = [exe, "serve", "--bundle", str(bundle), "--port", str(self.port), "--log-level", "warning"]
        for k, v in settings.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        self.log = open(Path(bundle).parent / f"server-{self.port}.log", "w+")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self.wait_listening()
        if wait_ready:
            self.wait_ready()

    def wait_listening(self, timeout: float = 60.0) -> None:
        import time

        import httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                httpx.get(self.url + "/healthz", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError(f"server not listening after {timeout}s: {self.output()}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        import time

        import httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if httpx.get(self.url + "/readyz", timeout=2.0).status_code == 200:
                return
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout}s: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except Exception:
                self.proc.kill()
        self.log.close()


def _server_factory(bundle):
    servers = []

    def start(wait_ready: bool = True, env: dict | None = None, **settings) -> Server:
        s = Server(bundle, wait_ready=wait_ready, env=env, **settings)
        servers.append(s)
        return s

    return start, servers


@pytest.fixture
def start_server(bundle):
    """Servers for one test, stopped when it ends: each is 4 processes and their shared memory."""
    start, servers = _server_factory(bundle)
    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def server(bundle) -> Server:
    """A default server shared by the tests that do not change its settings."""
    start, servers = _server_factory(bundle)
    yield start(max_queue_delay_ms=20, max_body_bytes=2 * 1024 * 1024)
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def product_images(demo_catalog) -> list[bytes]:
    from attrx.service.catalog.reader import read_catalog

    return [p.image.read_bytes() for p in read_catalog(demo_catalog).products if p.image][:64]


# -- the `slow` marker: tests that train a model (directly, or through the session's checkpoint,
# bundle or server fixtures). `make test` runs everything; `make test-fast` skips these.
SLOW_FIXTURES = {"checkpoint", "bundle", "server", "start_server", "impatient", "runs"}
TRAINS = ("train(", "pretrain(", "TrainConfig(", "PretrainConfig(", '"train"', '"pretrain"')


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a model (directly or through a session fixture)")


def _trains(item) -> bool:
    import inspect

    try:
        src = inspect.getsource(item.function)
    except (OSError, TypeError):
        return False
    return any(t in src for t in TRAINS)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or _trains(item):
            item.add_marker(pytest.mark.slow)


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


def long_catalog(demo_catalog, tmp_path, repeats: int = 30) -> tuple[Path, list[str]]:
    """The demo products with images, repeated under new ids: a catalog long enough to interrupt."""
    rows = [r for r in csv.DictReader(open(demo_catalog)) if r["image"]]
    cat = tmp_path / "long.csv"
    ids = []
    with open(cat, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "image"])
        for k in range(repeats):
            for r in rows:
                ids.append(f"{r['id']}-{k}")
                w.writerow([ids[-1], r["title"], str(demo_catalog.parent / r["image"])])
    return cat, ids
