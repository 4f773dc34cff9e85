"""The GPU paths' failure modes, shown on this CPU machine with the real onnxruntime:

- a provider asked for that does not load stops the server at start (onnxruntime itself only logs it
  and runs on the CPU), unless --allow-provider-fallback; /v1/model and attrx_model_info then name the
  provider that really runs. onnxruntime-gpu without its CUDA libraries is simulated by listing
  CUDAExecutionProvider as available (a sitecustomize in the server's PYTHONPATH): the CPU build then
  behaves exactly as onnxruntime-gpu does when CUDA fails to load, it runs the session on the CPU.
- the TensorRT provider's cache folder, where the default is not writable;
- the engine builder's version and timing-cache checks (their TensorRT-facing halves, on small
  stand-ins for the builder's config: the full TensorRT needs a GPU).
"""

from __future__ import annotations

import logging
import re

import httpx
import pytest
from helpers import scrape

from attrx.service.contract.bundle import TENSORRT_VERSION, load_bundle
from attrx.service.inference.runtime import BackendError, load_backend

SITECUSTOMIZE = """
import onnxruntime as _ort
_real = _ort.get_available_providers
_ort.get_available_providers = lambda: ["CUDAExecutionProvider", *_real()]
"""


@pytest.fixture
def cuda_listed(monkeypatch):
    import onnxruntime as ort

    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real()])


def test_a_provider_that_does_not_load_is_an_error(bundle, cuda_listed):
    with pytest.raises(BackendError, match=r"CUDAExecutionProvider was asked for, but onnxruntime runs the model on "
                                           r"CPUExecutionProvider.*--allow-provider-fallback"):
        load_backend(load_bundle(bundle), providers="cuda")


def test_with_fallback_allowed_it_runs_on_what_loaded_and_says_so(bundle, cuda_listed, caplog):
    with caplog.at_level(logging.WARNING, logger="attrx.runtime"):
        backend = load_backend(load_bundle(bundle), providers="cuda", allow_fallback=True)
    assert backend.providers == ["CPUExecutionProvider"]
    assert backend.fallback.startswith("CUDAExecutionProvider was asked for")
    assert "serving on it" in caplog.text
    assert backend.precision == "fp32"  # the variant chosen for the CPU, as if asked for cpu


def test_server_refuses_to_start_on_a_silent_cpu_fallback(bundle, tmp_path, start_server):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    with pytest.raises(RuntimeError, match=r"(?s)server exited with 1.*cannot serve: BackendError: CUDAExecutionProvider was asked for"):
        start_server(env={"PYTHONPATH": str(tmp_path)}, providers="cuda", workers=1)


def test_server_with_fallback_allowed_reports_the_provider_that_runs(bundle, tmp_path, start_server):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    s = start_server(env={"PYTHONPATH": str(tmp_path)}, providers="cuda", workers=1,
                     allow_provider_fallback=True)
    assert "CUDAExecutionProvider was asked for" in s.output()
    model = httpx.get(s.url + "/v1/model").json()
    assert model["providers"] == ["CPUExecutionProvider"]
    info = [ln for ln in scrape(s).splitlines() if ln.startswith("attrx_model_info{")]
    assert len(info) == 1 and 'provider="CPUExecutionProvider"' in info[0] and info[0].endswith(" 1.0"), info


def test_tensorrt_cache_falls_back_when_the_home_is_not_writable(bundle, tmp_path, monkeypatch, caplog):
    """A container user without a home: the default cache cannot be made (as root nothing is
    unwritable, so the home here is a path under a file, which no one can create)."""
    from attrx.service.inference.runtime.onnxruntime_backend import cache_root, tensorrt_options

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("HOME", str(tmp_path / "a-file" / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("ATTRX_CACHE_DIR", raising=False)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    with caplog.at_level(logging.WARNING, logger="attrx.runtime"):
        opts = tensorrt_options(load_bundle(bundle), "fp32", 8, None)
    assert opts["trt_engine_cache_path"].startswith(str(tmp_path / "tmp" / "attrx-"))
    assert "not writable" in caplog.text and "ATTRX_CACHE_DIR" in caplog.text
    monkeypatch.setenv("ATTRX_CACHE_DIR", str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache" / "tensorrt"
    with pytest.raises(BackendError, match=r"--trt-cache-dir .*a-file/x: cannot create or write"):
        cache_root(str(tmp_path / "a-file" / "x"))


class _Config:
    """The two timing-cache calls of TensorRT's IBuilderConfig, as its docs describe them: a cache
    from another TensorRT or GPU is not attached (set_timing_cache returns False)."""

    def __init__(self, accepts: bytes):
        self.accepts, self.attached = accepts, None

    def create_timing_cache(self, data: bytes):
        return ("cache", bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        if cache[1] not in (self.accepts, b""):
            return False
        self.attached = cache[1]
        return True


def test_a_mismatched_timing_cache_is_logged_and_replaced(caplog):
    from attrx.export.tensorrt_engine import attach_timing_cache

    ok = _Config(accepts=b"this gpu")
    assert attach_timing_cache(ok, b"this gpu") is True and ok.attached == b"this gpu"
    other = _Config(accepts=b"this gpu")
    with caplog.at_level(logging.WARNING, logger="attrx.export"):
        assert attach_timing_cache(other, b"another gpu's cache") is False
    assert other.attached == b"" and "does not match this TensorRT and GPU" in caplog.text


def test_the_builder_must_be_the_pinned_tensorrt():
    from attrx.export.tensorrt_engine import EngineBuildError, check_builder_version

    check_builder_version(TENSORRT_VERSION)
    check_builder_version(TENSORRT_VERSION + ".post1")
    with pytest.raises(EngineBuildError, match=re.escape(f"builder is 10.13.3.9, and attrx's lean runtime is pinned "
                                                         f"to {TENSORRT_VERSION}")):
        check_builder_version("10.13.3.9")
    check_builder_version("10.13.3.9", allow_other=True)  # allowed, with a warning


def test_score_stops_with_the_reason_not_a_traceback(bundle, demo_catalog, tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    r = subprocess.run([sys.executable, "-m", "attrx", "score", str(demo_catalog), "--bundle", str(bundle), "--out",
                        str(tmp_path / "out.jsonl"), "--providers", "cuda", "--quiet"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 1, r.stderr
    assert "attrx score: CUDAExecutionProvider was asked for, but onnxruntime runs the model on" in r.stderr
    assert "Traceback" not in r.stderr
