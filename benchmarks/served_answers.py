"""The answers a bundle gives to the same products through HTTP and `attrx score`, saved to compare
two versions of attrx (a refactoring must leave them identical). Prints JSON.

    python benchmarks/served_answers.py record --bundle build/demo-bundle \
        --catalog build/demo/data/catalog.csv --n 1000 --out build/answers-after.json
    python benchmarks/served_answers.py compare build/answers-before.json build/answers-after.json

`record` serves the bundle with `attrx serve` on 127.0.0.1, posts each of the catalog's first N
products to /v1/extract one at a time (title and image file), then scores the same N rows with
`attrx score`. It keeps every answer without `latency_ms`, the one field that differs by run.
`compare` names the products whose answers differ (exit status 1 if any).
"""

from __future__ import annotations

import argparse
import csv
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ATTRX = [sys.executable, "-m", "attrx"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(catalog: Path, n: int) -> list[dict]:
    with catalog.open(newline="") as f:
        rows = [r for _, r in zip(range(n), csv.DictReader(f), strict=False)]
    for r in rows:
        if r.get("image"):
            r["image"] = str((catalog.parent / r["image"]).resolve())
    return rows


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"attrx serve exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"attrx serve was not ready within {timeout_s:.0f} s")


def http_answers(bundle: Path, rows: list[dict]) -> dict[str, dict]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*ATTRX, "serve", "--bundle", str(bundle), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(url, proc)
        out = {}
        with httpx.Client(base_url=url, timeout=30.0) as client:
            for r in rows:
                files = {"image": Path(r["image"]).read_bytes()} if r.get("image") else None
                data = {"title": r["title"]} if r.get("title") else {}
                res = client.post("/v1/extract", data=data, files=files)
                body = res.json()
                body.pop("latency_ms", None)
                out[r["id"]] = {"status": res.status_code, "body": body}
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def score_answers(bundle: Path, rows: list[dict]) -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cat = Path(tmp) / "catalog.csv"
        with cat.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        out = Path(tmp) / "predictions.jsonl"
        subprocess.run([*ATTRX, "score", str(cat), "--bundle", str(bundle), "--out", str(out), "--quiet"],
                       check=True, stdout=subprocess.DEVNULL)
        answers = [json.loads(line) for line in out.read_text().splitlines()]
    return {a["id"]: a for a in answers}


def compare(a: dict, b: dict) -> dict:
    result = {}
    for part in ("http", "score"):
        ids = sorted(set(a[part]) | set(b[part]))
        differ = [i for i in ids if a[part].get(i) != b[part].get(i)]
        result[part] = {"products": len(ids), "identical": len(ids) - len(differ), "differ": differ[:20]}
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--bundle", type=Path, required=True)
    r.add_argument("--catalog", type=Path, required=True)
    r.add_argument("--n", type=int, default=1000)
    r.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "record":
        rows = _rows(a.catalog, a.n)
        doc = {"http": http_answers(a.bundle, rows), "score": score_answers(a.bundle, rows)}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(doc, sort_keys=True))
        print(json.dumps({"products": len(rows), "http": len(doc["http"]), "score": len(doc["score"]),
                          "out": str(a.out)}))
        return 0
    result = compare(json.loads(a.before.read_text()), json.loads(a.after.read_text()))
    print(json.dumps(result, indent=2))
    return 0 if all(not p["differ"] for p in result.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
