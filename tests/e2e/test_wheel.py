"""The wheel as a new user gets it: built with `python -m build`, it holds only attrx/; installed into a
clean virtual environment and run from a folder outside the checkout, `attrx serve` serves a bundle,
`python -m attrx` works, and the old generic names (`service`, `training`, `export`) do not import."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (whl,) = out.glob("attrx-*.whl")
    return whl


def test_the_wheel_holds_only_attrx(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    outside = [n for n in names if not (n.startswith("attrx/") or n.split("/")[0].endswith(".dist-info"))]
    assert not outside, f"files outside attrx/: {outside[:10]}"
    for must in ("attrx/__main__.py", "attrx/cli/__init__.py", "attrx/service/contract/bundle.py",
                 "attrx/training/configs/tiny.json", "attrx/export/build.py"):
        assert must in names, must
    top = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("top_level.txt"))).decode().split()
    assert top == ["attrx"]


@pytest.fixture(scope="module")
def clean_venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("clean") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return venv


def _run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120)


def test_old_names_do_not_import_and_python_m_attrx_works(clean_venv, tmp_path):
    for old in ("service", "training", "export"):
        r = _run(clean_venv, tmp_path, "-c", f"import {old}")
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (old, r.stderr)
    r = _run(clean_venv, tmp_path, "-c", "import attrx.service.contract.bundle as b, sys; "
                                         "sys.exit(0 if 'torch' not in sys.modules else 1)")
    assert r.returncode == 0, r.stderr
    r = _run(clean_venv, tmp_path, "-m", "attrx", "--help")
    assert r.returncode == 0 and "serve" in r.stdout, r.stderr


def test_installed_attrx_serves_a_bundle(clean_venv, bundle, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.Popen([str(clean_venv / "bin" / "attrx"), "serve", "--bundle", str(bundle), "--port", str(port),
                             "--workers", "1"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url, end = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while time.monotonic() < end:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        r = httpx.post(url + "/v1/extract", json={"title": "Roadster Men Blue Striped T-Shirt"}, timeout=30)
        assert r.status_code == 200, r.text
        assert set(r.json()["predictions"]) == {"category", "colour", "pattern", "gender"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
