"""Print pip constraints pinning each requirement of attrx's base install and the extras named on the
command line to the lowest version pyproject.toml allows (`name>=X` -> `name==X`).

`make test-lowest` installs with these constraints and runs the export, serving and scoring tests,
so the minimums pyproject.toml declares are tested, not hoped for. torch is left out: the Makefile
installs its exact CPU pin first (a range resolves to a CUDA build of several GB)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

SKIP = {"torch"}


def lowest(requirements: list[str]) -> list[str]:
    out = []
    for req in requirements:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", req)
        name, spec = m.group(1), m.group(3)
        low = re.search(r">=\s*([0-9][^,;\s]*)", spec)
        if name.lower() in SKIP or not low:
            continue
        out.append(f"{name}=={low.group(1)}")
    return out


def main(argv: list[str]) -> int:
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in argv:
        reqs += project["optional-dependencies"][extra]
    print("\n".join(lowest(reqs)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
