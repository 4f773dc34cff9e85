"""`make check-locks` (.ci/run): each lock file under requirements/ still matches pyproject.toml. The lock
is compiled again with uv, starting from its own pins (uv keeps every pin that still satisfies the
requirements), into a temporary copy: any difference means pyproject.toml asks for what the lock does
not hold, and `make locks` must be run and committed. Reaches the package index."""

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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uv", required=True)
    a = p.parse_args()
    stale = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in LOCKS.items():
            lock = ROOT / "requirements" / name
            copy = Path(tmp) / name
            shutil.copy(lock, copy)
            subprocess.run([a.uv, "pip", "compile", *args, *COMMON, "-o", str(copy)], cwd=ROOT, check=True,
                           timeout=300)
            diff = list(difflib.unified_diff(lock.read_text().splitlines(), copy.read_text().splitlines(),
                                             f"requirements/{name}", "compiled now", lineterm="", n=0))
            print(f"{name}: {'matches pyproject.toml' if not diff else 'STALE: run make locks and commit'}")
            if diff:
                stale += 1
                print("\n".join(diff[:40]))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
