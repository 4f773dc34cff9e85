"""benchmarks/serve.py on two checkouts of attrx (e.g. main before and after a change), alternating, with
repetitions: a refactoring must not cost throughput beyond the runs' own spread. Prints JSON.

    git worktree add ../attrx-main origin/main && (cd ../attrx-main && make install)
    python benchmarks/versions.py --old ../attrx-main --new . --rounds 3 -- \
        --bundle build/demo-bundle --catalog build/demo/data/catalog.csv --no-duplicates --concurrency 8,32

Each checkout runs its own benchmarks/serve.py with its own .venv (so each serves with its own code);
the order alternates round by round. Reported per round: the batched server's requests/s at each
concurrency, the in-process pipeline's items/s and `attrx score`'s items/s, and new / old for each,
with the median and range of those ratios over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_side(root: Path, args: list[str]) -> dict:
    python = root / ".venv" / "bin" / "python"
    r = subprocess.run([str(python), str(root / "benchmarks" / "serve.py"), "--repeats", "1", *args],
                       cwd=root, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{root}: benchmarks/serve.py failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout)


def figures(doc: dict) -> dict[str, float]:
    out = {f"batched_c{row['concurrency']}_rps": row["requests_per_s"] for row in doc["batched"] if "concurrency" in row}
    out["in_process_items_per_s"] = doc["in_process"]["items_per_s"]
    out["score_items_per_s"] = doc["score"]["items_per_s"]
    return out


def spread(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="checkout with its own .venv (the baseline)")
    ap.add_argument("--new", type=Path, required=True, help="checkout with its own .venv (the change)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("serve_args", nargs=argparse.REMAINDER, help="after --: benchmarks/serve.py's arguments")
    a = ap.parse_args()
    args = [x for x in a.serve_args if x != "--"]
    args = [str(Path(x).resolve()) if Path(x).exists() else x for x in args]  # paths work from either root
    rounds = []
    for r in range(a.rounds):
        order = [("old", a.old), ("new", a.new)] if r % 2 == 0 else [("new", a.new), ("old", a.old)]
        got = {}
        for name, root in order:
            t0 = time.perf_counter()
            print(f"round {r + 1}: {name} ({root})...", file=sys.stderr, flush=True)
            got[name] = figures(run_side(root.resolve(), args))
            print(f"  {json.dumps(got[name])} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        rounds.append({"order": [n for n, _ in order], **got,
                       "new_over_old": {k: round(got["new"][k] / got["old"][k], 3) for k in got["new"]}})
    keys = list(rounds[0]["new_over_old"])
    print(json.dumps({"benchmark": "versions", "checkouts": {"old": str(a.old), "new": str(a.new)}, "serve_args": args,
                      "rounds": rounds,
                      "new_over_old": {k: spread([x["new_over_old"][k] for x in rounds]) for k in keys},
                      "old": {k: spread([x["old"][k] for x in rounds]) for k in keys},
                      "new": {k: spread([x["new"][k] for x in rounds]) for k in keys}}, indent=2))


if __name__ == "__main__":
    main()
