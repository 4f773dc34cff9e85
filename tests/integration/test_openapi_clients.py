"""The server's own /openapi.json against the tools teams generate clients with: an OpenAPI validator,
and openapi-python-client, whose generated client then calls /v1/extract on the real server.

openapi-python-client runs from a virtual environment of its own (build/venv-openapi-gen, made once
from PyPI): its pins are not attrx's."""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path

import httpx
import pytest

GENERATOR = "openapi-python-client==0.29.1"
TOOL = Path(__file__).resolve().parents[2] / "build" / "venv-openapi-gen"


def _tool_venv() -> Path:
    py = TOOL / "bin" / "python"
    stamp = TOOL / f".{GENERATOR}"
    if not stamp.exists():
        venv.create(TOOL, with_pip=True, clear=True)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", GENERATOR, "ruff"], capture_output=True,
                           text=True, timeout=600)
        if r.returncode != 0:
            pytest.skip(f"{GENERATOR} does not install here: {r.stderr[-500:]}")
        stamp.touch()
    return TOOL / "bin"


def test_the_document_is_valid_openapi(server):
    from openapi_spec_validator import validate

    validate(httpx.get(server.url + "/openapi.json", timeout=10).json())


def test_openapi_python_client_generates_every_operation_and_it_calls_the_server(server, tmp_path, product_images):
    tool = _tool_venv()
    spec = tmp_path / "openapi.json"
    spec.write_text(httpx.get(server.url + "/openapi.json", timeout=10).text)
    env = {**os.environ, "PATH": f"{tool}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run([str(tool / "openapi-python-client"), "generate", "--path", str(spec), "--meta", "none",
                        "--output-path", str(tmp_path / "gen")], capture_output=True, text=True, env=env,
                       timeout=300, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Warning" not in out and "WARNING" not in out, out
    ops = {p.stem for p in (tmp_path / "gen" / "api").rglob("*.py") if p.stem != "__init__"}
    assert {"extract_v1_extract_post", "extract_batch_v1_extract_batch_post", "model_info_v1_model_get"} <= ops
    (tmp_path / "img.jpg").write_bytes(product_images[0])
    call = f"""
import json, sys
sys.path.insert(0, {str(tmp_path)!r})
from gen import Client
from gen.api.default import extract_v1_extract_post as extract
from gen.models import ExtractV1ExtractPostFilesBody
from gen.types import File
with open({str(tmp_path / 'img.jpg')!r}, 'rb') as f:
    body = ExtractV1ExtractPostFilesBody(title="navy blue shirt", image=File(payload=f, file_name="img.jpg"))
    answer = extract.sync(client=Client(base_url={server.url!r}), body=body)
print(json.dumps(answer.to_dict()))
"""
    r = subprocess.run([str(tool / "python"), "-c", call], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    want = httpx.post(server.url + "/v1/extract", data={"title": "navy blue shirt"},
                      files={"image": ("img.jpg", product_images[0], "image/jpeg")}, timeout=30).json()
    assert {a: p["value"] for a, p in got["predictions"].items()} == \
        {a: p["value"] for a, p in want["predictions"].items()}
