"""The container image's lock files (requirements/*.lock), one definition of how each is compiled (uv,
hashes, Python 3.11 on Linux x86-64: the image's). Reaches the package index.

- `write` (`make locks`): compile each lock, starting from its own pins (uv keeps every pin that still
  satisfies the requirements), so a re-run changes only what must change.
- `check` (`make check-locks`, .ci/run): compile each into a temporary copy the same way; any difference
  means pyproject.toml asks for what the lock does not hold, and `make locks` must be run and committed."""

from __future__ import annotations

import argparse
import difflib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--generate-hashes", "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28", "-q",
          "--custom-compile-command", "make locks"]
LOCKS = {"serve-cpu.lock": ["pyproject.toml"],
         "serve-gpu.lock": ["pyproject.toml", "--extra", "gpu", "--no-emit-package", "onnxruntime"],
         "build.lock": ["requirements/build.in"]}


def compile_lock(uv: str, name: str, out: Path) -> None:
    subprocess.run([uv, "pip", "compile", *LOCKS[name], *COMMON, "-o", str(out)], cwd=ROOT, check=True, timeout=300)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["check", "write"])
    p.add_argument("--uv", required=True)
    a = p.parse_args()
    if a.action == "write":
        for name in LOCKS:
            compile_lock(a.uv, name, ROOT / "requirements" / name)
            print(f"requirements/{name} written")
        return 0
    stale = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in LOCKS:
            lock = ROOT / "requirements" / name
            copy = Path(tmp) / name
            shutil.copy(lock, copy)
            compile_lock(a.uv, name, copy)
            diff = list(difflib.unified_diff(lock.read_text().splitlines(), copy.read_text().splitlines(),
                                             f"requirements/{name}", "compiled now", lineterm="", n=0))
            print(f"{name}: {'matches pyproject.toml' if not diff else 'STALE: run make locks and commit'}")
            if diff:
                stale += 1
                print("\n".join(diff[:40]))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
