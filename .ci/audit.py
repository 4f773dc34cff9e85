"""`make audit` (.ci/run): pip-audit over the image's lock files. Exit 1 when a locked release has a
published vulnerability. Where the vulnerability service cannot be reached (a registry proxy that
serves only the package index, as on attrx's build machines), it says so and exits 0: an audit that
could not run is reported, not passed off as clean."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def audit(pip_audit: str, lock: str) -> tuple[list[dict], int, int]:
    r = subprocess.run([pip_audit, "-r", lock, "--require-hashes", "--disable-pip", "--no-deps", "-f", "json",
                        "--progress-spinner", "off"], capture_output=True, text=True, timeout=600)
    try:
        report = json.loads(r.stdout)
    except json.JSONDecodeError:
        print(f"{lock}: pip-audit could not run: {(r.stderr or r.stdout)[-600:]}")
        return [], 0, 0
    deps = report.get("dependencies", [])
    vulns = [d for d in deps if d.get("vulns")]
    unaudited = sum(1 for d in deps if d.get("skip_reason"))
    return vulns, len(deps), unaudited


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pip-audit", required=True)
    p.add_argument("locks", nargs="+")
    a = p.parse_args()
    found = 0
    for lock in a.locks:
        vulns, total, unaudited = audit(a.pip_audit, lock)
        if total and unaudited == total:
            print(f"{lock}: NOT AUDITED: the vulnerability service is unreachable from here ({total} packages)")
            continue
        print(f"{lock}: {total - unaudited} packages audited, {unaudited} not, {len(vulns)} with vulnerabilities")
        for d in vulns:
            print(f"  {d['name']} {d['version']}: " + ", ".join(v["id"] for v in d["vulns"]))
        found += len(vulns)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
