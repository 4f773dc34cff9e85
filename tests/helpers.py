"""Helpers the test tiers share (imported as `helpers`; fixtures stay in conftest.py).

`untrained_checkpoint` is the start of a real bundle built in seconds (conftest's `bundle` exports it): a tiny CMA-CLIP with random weights, a WordPiece
tokenizer trained on the demo titles, a written calibration (real per-class thresholds, one class per
attribute without support, so `accepted` and the null threshold are both exercised) and the same
`attrx export` path as a trained model. Only tests about training quality train.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx

from attrx.service.contract.situations import SITUATIONS

ATTRS = ["category", "colour", "pattern", "gender"]
TARGETS = (0.90, 0.95)


def write_calibration(path: Path, classes: dict[str, list[str]], support: dict[str, list[int]]) -> dict:
    """Thresholds by hand, set around chance (1/n for n classes) so that an untrained model's answers
    fall on both sides: at P>=0.90 class k needs (1 + 0.05 k)/n, at P>=0.95 twice that; the last class
    has no threshold (as a class without validation support: never accepted). Colour has the default
    family Blue (blue, teal) at a threshold near its summed chance, so that its values, not accepted at
    P>=0.95, are accepted at the family about as often as not."""
    def threshold(k: int, n: int, t: float) -> float | None:
        return None if k == n - 1 else round((1 + 0.05 * k) / n * (2 if t > 0.9 else 1), 4)

    thresholds = {a: {f"{t:.2f}": [threshold(k, len(c), t) for k in range(len(c))] for t in TARGETS}
                  for a, c in classes.items()}
    doc = {"precision_targets": list(TARGETS), "min_support": 10, "confidence": 0.5,
           "thresholds": thresholds, "support": support, "families": {}}
    if "colour" in classes and {"blue", "teal"} <= set(classes["colour"]):  # the default colour family Blue
        cl = classes["colour"]
        doc["families"]["colour"] = {
            "names": ["Blue"], "of_class": [0 if c in ("blue", "teal") else -1 for c in cl], "source": "default",
            "situations": {s: {"support": 100, "thresholds": {f"{t:.2f}": [round((2.0 if t > 0.9 else 1.2) / len(cl), 4)]
                                                            for t in TARGETS}} for s in SITUATIONS}}
    (path / "calibration.json").write_text(json.dumps(doc, indent=2))
    return doc


def untrained_checkpoint(catalog: Path, out: Path, *, family: str = "cma-clip", seed: int = 0,
                         config: str | None = None) -> Path:
    """A checkpoint folder as `attrx train` writes one, with the model left at its random init."""
    import numpy as np
    import torch

    from attrx.service.catalog.reader import read_catalog
    from attrx.training.data import tokenizer
    from attrx.training.data.encode import label_maps, split_of
    from attrx.training.models.checkpoint import TOKENIZER, save_checkpoint
    from attrx.training.models.factory import create_model, resolve_config
    from attrx.training.params import TrainConfig

    cfg = TrainConfig(catalog=str(catalog), attributes=ATTRS, out=str(out), val_frac=0.2, test_frac=0.2,
                      config=config or ("momo-tiny" if family == "momo" else "tiny"), family=family, seed=seed)
    products = [p for p in read_catalog(catalog, tuple(ATTRS), require_labels=True).products
                if split_of(p.id, cfg.val_frac, cfg.test_frac) == "train"]
    classes = label_maps(products, tuple(ATTRS), 0)
    out.mkdir(parents=True, exist_ok=True)
    raw = tokenizer.train_wordpiece([p.title for p in products], resolve_config(cfg.config, cfg.family).vocab_size)
    tokenizer.save(raw, out / TOKENIZER)
    torch.manual_seed(seed)
    model, pre = create_model(cfg, [len(classes[a]) for a in ATTRS], tokenizer.special_ids(raw), raw.get_vocab_size())
    model.eval()
    words = {a: sorted({p.labels[a] for p in products if p.labels.get(a)}) for a in ATTRS}
    meta = {"training": cfg.model_dump(), "split": {"val_frac": cfg.val_frac, "test_frac": cfg.test_frac},
            "other_for": [], "label_words": words, "best": "untrained", "train_seconds": 0.0,
            "counts": {"train": len(products), "val": 0, "test": 0, "skipped": 0}}
    save_checkpoint(out, model, classes, pre, out / TOKENIZER, meta)
    support = {a: np.bincount([classes[a].index(p.labels[a]) for p in products if p.labels.get(a) in classes[a]],
                              minlength=len(classes[a])).astype(int).tolist() for a in ATTRS}
    write_calibration(out, classes, support)
    return out


class Server:
    """A real `attrx serve` process on 127.0.0.1."""

    def __init__(self, bundle: Path, wait_ready: bool = True, env: dict | None = None, **settings):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        exe = str(Path(sys.executable).parent / "attrx")
        args = [exe, "serve", "--bundle", str(bundle), "--port", str(self.port), "--log-level", "warning"]
        for k, v in settings.items():  # True: a switch (--allow-provider-fallback)
            args += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
        self.log = open(Path(bundle).parent / f"server-{self.port}.log", "w+")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        try:
            self.wait_listening()
            if wait_ready:
                self.wait_ready()
        except BaseException:  # never ready: not left running behind the failed test
            self.stop()
            raise

    def wait_listening(self, timeout: float = 60.0) -> None:
        wait_listening(self.url, self.proc, self.output, timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:


        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:  # a connection can also wait out a restarting front-end
                if httpx.get(self.url + "/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
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


def wait_listening(url: str, proc: subprocess.Popen, output, timeout: float = 60.0) -> None:
    """Until url/healthz answers; the process's output (output()) in the error when it exits first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {output()}")
        try:
            httpx.get(url + "/healthz", timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise TimeoutError(f"server not listening after {timeout}s: {output()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log, what: str, timeout: float = 180.0) -> None:
    """Until `url` answers 200 (another tool's server: Label Studio, MLflow); its log (an open file) in the
    failure when it exits first or never answers."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"{what} exited with {proc.returncode}: {log.read()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} did not answer {url} within {timeout:g} s")


def server_factory(bundle):
    servers = []

    def start(wait_ready: bool = True, env: dict | None = None, **settings) -> Server:
        s = Server(bundle, wait_ready=wait_ready, env=env, **settings)
        servers.append(s)
        return s

    return start, servers


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


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def scrape(server) -> str:
    return httpx.get(server.url + "/metrics", timeout=10).text


def wait_metric(server, name: str, value: float, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if metric(scrape(server), name) >= value:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{name} did not reach {value}")


def png(width: int, height: int, fill: int = 0x80) -> bytes:
    """A solid-colour PNG built by hand: large ones take long to decode and compress to little."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = (b"\0" + bytes([fill]) * (3 * width)) * height
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def shot(driver, name: str, tmp_path: Path) -> None:
    """A browser screenshot into the test's folder, and into ATTRX_SCREENSHOTS when set (docs/images)."""
    driver.save_screenshot(str(tmp_path / name))
    if os.environ.get("ATTRX_SCREENSHOTS"):
        Path(os.environ["ATTRX_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(os.environ["ATTRX_SCREENSHOTS"]) / name))


def build_site(out: Path) -> Path:
    """The documentation site, built as `make docs` builds it (--strict), into `out`."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=root,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return out


class ImageHost:
    """A real HTTP image server on 127.0.0.1 (benchmarks/image_server.py) serving `root`, with its
    latency and faults; `stats()` counts the requests it answered."""

    def __init__(self, root: Path, **opts):
        script = Path(__file__).resolve().parents[1] / "benchmarks" / "image_server.py"
        args = [sys.executable, str(script), "--root", str(root)]
        for k, v in opts.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.proc.kill()
            raise RuntimeError(f"image server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def stats(self) -> dict:
        return httpx.get(self.url + "/_stats", timeout=5).json()

    def reset(self) -> None:
        httpx.post(self.url + "/_reset", timeout=5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
