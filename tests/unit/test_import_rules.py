"""The import rules of ../shared/design/ARCHITECTURE.md, as import-linter contracts (pyproject.toml):
they hold on the tree, a deliberately forbidden import breaks them, and the module graph has no
circle at all (import-linter's acyclic contract only looks at sibling packages)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOTS = ["attrx.cli", "attrx.service", "attrx.training", "attrx.export"]
LINT = str(Path(sys.executable).parent / "lint-imports")


def _lint(cwd: Path, config: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else dict(os.environ)
    return subprocess.run([LINT, "--config", str(config), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_the_tree_keeps_every_contract():
    r = _lint(ROOT, ROOT / "pyproject.toml")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


@pytest.fixture(scope="module")
def copy_as_installed(tmp_path_factory) -> Path:
    """The source laid out as the wheel installs it (attrx/{cli,service,training,export}), so that a
    forbidden import can be added without touching the checkout."""
    dst = tmp_path_factory.mktemp("lint")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "attrx", dst / "src" / "attrx", ignore=ignore)
    for room in ("service", "training", "export"):
        shutil.copytree(ROOT / room, dst / "src" / "attrx" / room, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


@pytest.mark.parametrize("module, line, contract", [
    ("service/settings.py", "from attrx.training.evaluation import metrics", "service never imports training, export or torch"),
    ("service/inference/predictor.py", "import service.catalog", "The bare names service, training and export"),
    ("training/data/encode.py", "from attrx.service.http import errors", "training and export import only service's"),
    ("service/engine/batcher.py", "from attrx.service.http import errors", "Inside service"),
    ("service/scoring/local.py", "from attrx.service.inference.runtime import onnxruntime_backend",
     "Only the runtime factory names the concrete backends"),
    ("training/evaluation/evaluate.py", "from attrx.training.models import momo", "Only the family registry names the model families"),
    ("service/contract/bundle.py", "import attrx.cli", "nothing imports it"),
])
def test_a_forbidden_import_breaks_its_contract(copy_as_installed, module, line, contract):
    src = copy_as_installed / "src"
    control = _lint(copy_as_installed, copy_as_installed / "pyproject.toml", str(src))
    assert control.returncode == 0, control.stdout[-3000:] + control.stderr[-2000:]
    target = src / "attrx" / module
    original = target.read_text()
    try:
        target.write_text(original + f"\n{line}  # deliberately forbidden\n")
        r = _lint(copy_as_installed, copy_as_installed / "pyproject.toml", str(src))
    finally:
        target.write_text(original)
    assert r.returncode != 0, f"{line!r} in {module} passed lint-imports:\n{r.stdout[-3000:]}"
    broken = [ln for ln in r.stdout.splitlines() if ln.rstrip().endswith("BROKEN")]
    assert any(ln.startswith(contract[:40]) for ln in r.stdout.splitlines() if "BROKEN" in ln) or \
        contract[:40] in r.stdout, (broken, r.stdout[-3000:])
    assert "deliberately" not in original


def test_no_module_imports_itself_through_a_circle():
    import grimp

    graph = grimp.build_graph(*ROOTS, cache_dir=None)
    modules = sorted(graph.modules)
    index = {m: i for i, m in enumerate(modules)}
    edges = {m: [x for x in graph.find_modules_directly_imported_by(m) if x in index] for m in modules}
    circles = [c for c in _strongly_connected(modules, edges) if len(c) > 1]
    assert not circles, f"import circles: {circles}"


def _strongly_connected(nodes: list[str], edges: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == node:
                        break
                out.append(sorted(comp))
    return out
