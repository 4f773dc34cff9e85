"""The dead-code check of `make lint`: vulture at 60% confidence over the product folders (service,
training, export, attrx). The tests, benchmarks, docs hooks and deploy scripts are scanned too, as
users: code that only they call is measured or tested, not dead. Framework entry points are ignored
by name and decorator ([tool.vulture] in pyproject.toml) or listed in .ci/vulture_whitelist.py.
Prints what it finds in the product folders; exit status 1 if anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("service/", "training/", "export/", "attrx/")
SCANNED = ["service", "training", "export", "attrx", "tests", "benchmarks", "docs/hooks", "deploy/container",
           ".ci/vulture_whitelist.py"]


def main() -> int:
    r = subprocess.run([sys.executable, "-m", "vulture", *SCANNED], cwd=ROOT, capture_output=True, text=True)
    if r.returncode not in (0, 3):  # 3: vulture found something (anywhere)
        print(r.stdout + r.stderr, file=sys.stderr)
        return 1
    found = [line for line in r.stdout.splitlines() if line.startswith(PRODUCT)]
    print("\n".join(found) if found else f"dead code: none in {', '.join(p.rstrip('/') for p in PRODUCT)}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
