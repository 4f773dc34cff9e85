"""deploy/container/image.py's decisions that need no container runtime: what it says where none
works, and the bundle it puts in the build context."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "container"))
import image as img  # noqa: E402


def test_without_podman_or_a_docker_engine_it_says_what_to_install(tmp_path, monkeypatch):
    fake_docker = tmp_path / "docker"  # a docker client whose engine does not answer, as on these machines
    fake_docker.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake_docker.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(img.NoRuntime, match=r"apt-get install podman runc.*docker info"):
        img.runtime()


def test_a_bundle_outside_the_build_context_is_staged_where_dockerignore_lets_it_through(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    try:
        assert img.stage_bundle(bundle) == img.STAGED_BUNDLE
        assert (ROOT / img.STAGED_BUNDLE / "manifest.json").read_text() == "{}"
        ignore = (ROOT / ".dockerignore").read_text().splitlines()
        assert "build" in ignore and f"!{img.STAGED_BUNDLE}" in ignore and "!build/demo-bundle" in ignore
    finally:
        import shutil

        shutil.rmtree(ROOT / img.STAGED_BUNDLE, ignore_errors=True)
    assert img.stage_bundle(ROOT / "build" / "demo-bundle") == "build/demo-bundle"  # used in place
