"""The installed layout: one `attrx` namespace over the top-level folders, an explicit package list in
pyproject.toml that matches the tree, and the house limits on function and module length."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SOURCE_DIRS = ("attrx", "service", "training", "export")
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 80, 400


def _packages_in_tree() -> set[str]:
    """Every package setuptools must ship: attrx (a namespace package: no __init__.py), attrx/cli, and
    each folder with an __init__.py under the mapped folders, named by the package-dir mapping."""
    found = {"attrx"}
    for prefix, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([prefix, *rel.parts]) if rel.parts else prefix)
    return found


def test_the_package_list_matches_the_tree():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    tree = _packages_in_tree()
    assert not tree - listed, f"packages missing from [tool.setuptools] packages in pyproject.toml: {sorted(tree - listed)}"
    assert not listed - tree, f"listed packages with no folder: {sorted(listed - tree)}"


def test_the_mapping_keeps_the_top_level_folders_under_attrx():
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert mapping == {"attrx": "attrx", "attrx.service": "service", "attrx.training": "training",
                       "attrx.export": "export"}
    assert PYPROJECT["project"]["scripts"] == {"attrx": "attrx.cli:main"}
    assert not (ROOT / "attrx" / "__init__.py").exists(), "attrx is a namespace package (see pyproject.toml)"


def test_every_config_file_ships():
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["attrx.training"]
    assert "configs/*.json" in data and list((ROOT / "training" / "configs").glob("*.json"))


def _source_files():
    for d in SOURCE_DIRS:
        yield from sorted((ROOT / d).rglob("*.py"))


def test_no_function_over_80_lines_and_no_module_over_400():
    long_functions, long_modules = [], []
    for path in _source_files():
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"


# names shared on purpose, with one job: a factory picks an implementation (runtime backends, model
# families); the CLI's modules are named for the stage they front (attrx/cli/train.py -> training)
SAME_JOB = {"factory"}


def test_no_two_modules_share_a_name_with_different_jobs():
    names: dict[str, list[str]] = {}
    for path in _source_files():
        if path.name != "__init__.py" and path.stem not in SAME_JOB and path.parent.name != "cli":
            names.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
    shared = {k: v for k, v in names.items() if len(v) > 1}
    assert not shared, f"module names used twice: {shared}"


def _extra(name: str) -> list[str]:
    return PYPROJECT["project"]["optional-dependencies"][name]


def test_tensorrt_runtimes_are_pinned_to_the_version_engines_are_built_with():
    """A plan runs only on the lean runtime of the TensorRT that built it: both extras pin exactly the
    contract's TENSORRT_VERSION, and everything GPU-side is built for one CUDA major (13)."""
    from attrx.service.contract.bundle import TENSORRT_VERSION

    for extra in ("tensorrt", "gpu"):
        reqs = _extra(extra)
        assert f"tensorrt-lean-cu13=={TENSORRT_VERSION}" in reqs, (extra, reqs)
        assert "cuda-bindings>=13,<14" in reqs, (extra, reqs)
        assert not [r for r in reqs if "cu12" in r], reqs
    ort_gpu = next(r for r in _extra("gpu") if r.startswith("onnxruntime-gpu"))
    # CUDA 13 builds and the Attention op's CUDA kernel; the CUDA/cuDNN libraries from its own extras
    assert ort_gpu == "onnxruntime-gpu[cuda,cudnn]>=1.27", ort_gpu


def test_lowest_constraints_pin_every_declared_minimum():
    """`make test-lowest` installs with .ci/lowest_constraints.py's pins: every `>=` requirement of
    the base install and the train and vision extras at its minimum, torch excepted (its exact CPU
    pin comes first)."""
    import re
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / ".ci" / "lowest_constraints.py"), "train", "vision"],
                         capture_output=True, text=True, check=True).stdout.split()
    reqs = PYPROJECT["project"]["dependencies"] + _extra("train") + _extra("vision")
    want = {re.match(r"[\w.\-]+", r).group(0): re.search(r">=([\w.]+)", r).group(1) for r in reqs if ">=" in r}
    want.pop("torch")
    assert sorted(out) == sorted(f"{k}=={v}" for k, v in want.items())
    assert "onnxruntime==1.23" in out and not [x for x in out if x.startswith("torch")]


def test_licence_is_an_spdx_expression_and_the_build_backend_reads_it():
    """PEP 639: `project.license` is an SPDX expression (the table form is deprecated, an error from
    2027); a proprietary licence is a LicenseRef-, and setuptools reads the string form from 77 on."""
    import re

    assert PYPROJECT["project"]["license"] == "LicenseRef-Proprietary"
    (backend,) = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    low = re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", backend)
    assert low and int(low.group(1)) >= 77, backend


def test_attrx_version_prints_the_installed_version(capsys):
    import pytest

    from attrx.cli import main
    from attrx.version import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"attrx {__version__}"
    assert __version__ == PYPROJECT["project"]["version"]


# releases with published vulnerabilities that the declared minimums must be past (docs/security.md)
SAFE_MINIMUMS = {"pillow": "10.3", "python-multipart": "0.0.18", "starlette": "0.47.2", "fastapi": "0.116.1",
                 "h11": "0.16", "tqdm": "4.66.3", "torch": "2.6"}


def test_declared_minimums_are_past_known_vulnerabilities():
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    declared = {}
    for r in reqs:
        lows = [Version(s.version) for s in r.specifier if s.operator in (">=", "==")]
        if lows:
            declared[r.name.lower()] = max(lows + [declared.get(r.name.lower(), Version("0"))])
    for name, safe in SAFE_MINIMUMS.items():
        assert name in declared and declared[name] >= Version(safe), (name, declared.get(name), safe)


def test_the_image_installs_only_what_its_lock_files_hash():
    docker = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes" in docker and "requirements/serve-${VARIANT}.lock" in docker
    assert "pip install --no-deps --no-build-isolation" in docker  # attrx itself: no resolution
    for lock in ("serve-cpu.lock", "serve-gpu.lock", "build.lock"):
        text = (ROOT / "requirements" / lock).read_text()
        pins = [ln for ln in text.splitlines() if ln and not ln.startswith((" ", "#"))]
        assert pins and all("==" in p for p in pins), lock
        assert text.count("--hash=sha256:") >= len(pins), lock
    gpu = (ROOT / "requirements/serve-gpu.lock").read_text()
    assert "\nonnxruntime-gpu==" in gpu and "\nonnxruntime==" not in gpu  # never the two together


def test_the_servers_image_formats_default_is_the_contracts():
    """settings and contract are sibling rooms that cannot import each other: the default is written
    twice, and held equal here."""
    from attrx.service.contract.preprocess import IMAGE_FORMATS
    from attrx.service.settings import ServeSettings

    assert tuple(ServeSettings.model_fields["image_formats"].default.split(",")) == IMAGE_FORMATS
