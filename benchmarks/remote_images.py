"""Scoring a catalog whose images are remote, beside the same catalog from local files (docs/remote.md).

Side by side in one run, alternating, `--repeats` times (median and range):
- `local`: `attrx score` over local image files;
- `remote`: the same products, each image a distinct URL on an HTTP image server on 127.0.0.1
  (benchmarks/image_server.py: asyncio, files from memory) adding `--latency-ms` to every request;
  an empty image cache;
- `cached`: the same again with the cache the `remote` run left (the server sends no max-age, so
  each image is revalidated: a 304, no body), with the image requests counted;
- `fresh`: the same from a second server that sends `Cache-Control: max-age` (as image CDNs do),
  after an untimed run that filled its cache: no request at all.
Then, once each: `faults` (2% of requests failing transiently: 503 with Retry-After, resets; 0.5%
permanently: 404), checking every row lands in the output or the errors file and the errors are
exactly the permanent ones; `memory` (peak RSS of scoring all products against a tenth of them);
`s3` (a Parquet catalog in moto's S3 server, images as s3:// keys, scored locally and on Ray,
against the local files' predictions). Every run is a fresh `attrx score` process; products/s is
over its wall time. The image server's CPU use is reported beside each remote figure.

    python benchmarks/remote_images.py --bundle build/demo-bundle --catalog build/demo/data/catalog.csv
        [--products 20000] [--repeats 3] [--latency-ms 50] [--skip s3]        prints JSON
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXE = str(Path(sys.executable).parent / "attrx")


def write_catalogs(src: Path, n: int, folder: Path, base_url: str) -> tuple[Path, Path, list[dict]]:
    """n products cycling over the source catalog's images: a local catalog, and one of URLs (each
    product its own URL, `?p=<id>`, so no two share a cache entry)."""
    rows = [r for r in csv.DictReader(open(src)) if r.get("image")]
    out = []
    for i in range(n):
        r = rows[i % len(rows)]
        out.append({"id": f"p{i:06d}", "title": r["title"], "image": str((src.parent / r["image"]).resolve()),
                    "url": f"{base_url}/{r['image']}?p={i}", "rel": r["image"]})
    local, remote = folder / "local.csv", folder / "remote.csv"
    for path, col in ((local, "image"), (remote, "url")):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "title", "image"])
            w.writerows([r["id"], r["title"], r[col]] for r in out)
    return local, remote, out


class Host:
    def __init__(self, root: Path, **opts):
        args = [sys.executable, str(HERE / "image_server.py"), "--root", str(root)]
        for k, v in opts.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline().split()[1])}"

    def cpu_s(self) -> float:
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stats(self, reset: bool = False) -> dict:
        import urllib.request

        s = json.loads(urllib.request.urlopen(self.url + "/_stats").read())
        if reset:
            urllib.request.urlopen(urllib.request.Request(self.url + "/_reset", method="POST")).read()
        return s

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def score(catalog, bundle: Path, out: Path, *extra: str, env: dict | None = None) -> dict:
    """One `attrx score` process: wall seconds, its peak RSS (MiB) and its summary line's counts."""
    for p in out.parent.glob(out.name + "*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    t0 = time.perf_counter()
    proc = subprocess.Popen([EXE, "score", str(catalog), "--bundle", str(bundle), "--out", str(out), "--quiet",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"attrx score failed: {stderr[-2000:]}")
    return {"seconds": dt, "rss_mib": usage.ru_maxrss / 1024, "summary": stdout.strip().splitlines()[-1]}


def _rows(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}


def _spread(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3),
            "runs": [round(x, 3) for x in xs]}


def side_by_side(a, bundle: Path, work: Path, src: Path) -> dict:
    """local, remote (empty cache), cached (revalidated: the server sends no max-age) and fresh (a
    second server sending max-age: its warm-up run is not timed), alternating, `--repeats` times."""
    host, fresh_host = Host(src.parent, latency_ms=a.latency_ms), Host(src.parent, latency_ms=a.latency_ms,
                                                                       max_age=86400)
    local, remote, _ = write_catalogs(src, a.products, work, host.url)
    (work / "fresh").mkdir()
    fresh = write_catalogs(src, a.products, work / "fresh", fresh_host.url)[1]
    speed: dict[str, list[float]] = {"local": [], "remote": [], "cached": [], "fresh": []}
    cpu: dict[str, list[float]] = {"remote": [], "cached": [], "fresh": []}
    requests: dict[str, list[dict]] = {"cached": [], "fresh": []}
    try:
        for _ in range(a.repeats):
            speed["local"].append(a.products / score(local, bundle, work / "local.jsonl")["seconds"])
            for p in (work / "cache", work / "fresh-cache"):
                shutil.rmtree(p, ignore_errors=True)
            score(fresh, bundle, work / "warm.jsonl", env={"ATTRX_CACHE_DIR": str(work / "fresh-cache")})
            for case, h, cat, cache in (("remote", host, remote, "cache"), ("cached", host, remote, "cache"),
                                        ("fresh", fresh_host, fresh, "fresh-cache")):
                h.stats(reset=True)
                c0 = h.cpu_s()
                r = score(cat, bundle, work / f"{case}.jsonl", env={"ATTRX_CACHE_DIR": str(work / cache)})
                speed[case].append(a.products / r["seconds"])
                cpu[case].append((h.cpu_s() - c0) / r["seconds"])
                if case in requests:
                    requests[case].append(h.stats())
        same = all(_rows(work / f"{c}.jsonl") == _rows(work / "local.jsonl") for c in ("remote", "cached", "fresh"))
    finally:
        host.stop()
        fresh_host.stop()
    ratio = {k: [x / y for x, y in zip(speed[k], speed["local"], strict=True)] for k in cpu}
    return {"products": a.products, "latency_ms": a.latency_ms, "repeats": a.repeats,
            "products_per_s": {k: _spread(v) for k, v in speed.items()},
            "ratio_to_local": {k: _spread(v) for k, v in ratio.items()},
            "image_server_cpu_share": {k: _spread(v) for k, v in cpu.items()},
            "second_run_requests": requests, "identical_predictions": same,
            "targets": {"remote_ge_0.8x_local": statistics.median(ratio["remote"]) >= 0.8,
                        "cached_ge_0.95x_local": statistics.median(ratio["cached"]) >= 0.95,
                        "fresh_ge_0.95x_local": statistics.median(ratio["fresh"]) >= 0.95,
                        "second_run_sends_no_image": all(r.get("ok", 0) == 0 for r in requests["cached"]),
                        "fresh_run_makes_no_request": all(r.get("requests", 0) == 0 for r in requests["fresh"])}}


def faults(a, bundle: Path, work: Path, src: Path) -> dict:
    sys.path.insert(0, str(HERE))
    from image_server import chosen

    host = Host(src.parent, latency_ms=a.latency_ms, transient_rate=0.02, permanent_rate=0.005,
                transient_failures=2)
    try:
        _, remote, rows = write_catalogs(src, a.products, work, host.url)
        r = score(remote, bundle, work / "faults.jsonl", env={"ATTRX_CACHE_DIR": str(work / "fault-cache")})
        stats = host.stats()
    finally:
        host.stop()
    transient = {x["id"] for x in rows if chosen(x["rel"], 0.02, "t")}
    permanent = {x["id"] for x in rows if x["id"] not in transient and chosen(x["rel"], 0.005, "p")}
    scored = set(_rows(work / "faults.jsonl"))
    errors = {json.loads(x)["id"] for x in (work / "faults.jsonl.errors.jsonl").read_text().splitlines()}
    return {"products": a.products, "transient_paths_products": len(transient), "permanent_products": len(permanent),
            "failed_requests": {k: stats.get(k, 0) for k in ("transient", "permanent")},
            "scored": len(scored), "errors": len(errors), "seconds": round(r["seconds"], 1),
            "targets": {"every_row_accounted": scored | errors == {x["id"] for x in rows} and not scored & errors,
                        "transient_all_succeeded": not transient & errors,
                        "errors_exactly_permanent": errors == permanent}}


def memory(a, bundle: Path, work: Path, src: Path) -> dict:
    host = Host(src.parent)
    try:
        peaks = {}
        for n in (a.products // 10, a.products):
            _, remote, _ = write_catalogs(src, n, work, host.url)
            peaks[n] = score(remote, bundle, work / "mem.jsonl", "--image-cache", "none")["rss_mib"]
    finally:
        host.stop()
    small, big = peaks[a.products // 10], peaks[a.products]
    return {"peak_rss_mib": {str(k): round(v, 1) for k, v in peaks.items()}, "ratio": round(big / small, 3),
            "targets": {"within_10_percent": big <= 1.10 * small}}


def s3(a, bundle: Path, work: Path, src: Path) -> dict:
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
    os.environ.update(env)
    try:
        time.sleep(3)
        client = boto3.client("s3")
        client.create_bucket(Bucket="shop")
        local, _, rows = write_catalogs(src, a.s3_products, work, "unused")
        for rel in sorted({x["rel"] for x in rows}):
            client.upload_file(str(src.parent / rel), "shop", rel)
        keys = [f"s3://shop/{x['rel']}" for x in rows]
        pq.write_table(pa.table({"id": [x["id"] for x in rows], "title": [x["title"] for x in rows], "image": keys}),
                       work / "s3.parquet")
        client.upload_file(str(work / "s3.parquet"), "shop", "catalog.parquet")
        score(local, bundle, work / "local-s3.jsonl")
        want = _rows(work / "local-s3.jsonl")
        got = score("s3://shop/catalog.parquet", bundle, work / "s3.jsonl", "--image-cache", "none", env=env)
        ray = score("s3://shop/catalog.parquet", bundle, work / "ray.jsonl", "--image-cache", "none", "--ray",
                    "--ray-local-cpus", "2", env=env)
        from attrx.service.scoring.ray_data import data_files

        ray_rows = {r["id"]: r for p in data_files(work / "ray.jsonl")
                    for r in map(json.loads, p.read_text().splitlines())}
    finally:
        server.terminate()
        server.wait(10)
    return {"products": a.s3_products, "local_s3_seconds": round(got["seconds"], 1),
            "ray_s3_seconds": round(ray["seconds"], 1),
            "targets": {"local_identical": _rows(work / "s3.jsonl") == want,
                        "ray_same_values_and_accepted": _same(ray_rows, want)}}


def _same(got: dict, want: dict) -> bool:
    """The same products with the same value and `accepted` flag for every attribute."""
    if set(got) != set(want):
        return False
    first = next(iter(want.values()))
    attrs = [k for k in first if f"{k}_accepted" in first]
    return all(got[i][k] == want[i][k] for i in want for a in attrs for k in (a, f"{a}_accepted"))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="build/demo-bundle")
    p.add_argument("--catalog", default="build/demo/data/catalog.csv")
    p.add_argument("--products", type=int, default=20000)
    p.add_argument("--s3-products", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--skip", default="", help="comma-separated parts to leave out: speed,faults,memory,s3")
    a = p.parse_args(argv)
    bundle, src = Path(a.bundle).resolve(), Path(a.catalog).resolve()
    skip = set(filter(None, a.skip.split(",")))
    report = {}
    with tempfile.TemporaryDirectory(prefix="attrx-remote-bench-") as tmp:
        for name, fn in (("speed", side_by_side), ("faults", faults), ("memory", memory), ("s3", s3)):
            if name not in skip:
                work = Path(tmp) / name
                work.mkdir()
                report[name] = fn(a, bundle, work, src)
                print(json.dumps({name: report[name]}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
