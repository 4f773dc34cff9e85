"""Catalogs and images from anywhere: `attrx score` over http(s) against a real image server on
127.0.0.1 with latency and faults (benchmarks/image_server.py), and over s3:// against a real
S3-compatible server (moto's standalone server), locally and on a local Ray."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import ATTRS, ImageHost

from attrx.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from image_server import chosen  # noqa: E402

N = 48
EXE = str(Path(sys.executable).parent / "attrx")


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _errors(out: Path) -> list[dict]:
    return _rows(Path(str(out) + ".errors.jsonl"))


@pytest.fixture()
def site(demo_catalog, tmp_path):
    """N demo products with images: their files under site/ (served by a host), a catalog of
    local paths and a function writing one of URLs."""
    root = tmp_path / "site"
    (root / "img").mkdir(parents=True)
    rows = [r for r in csv.DictReader(open(demo_catalog)) if r["image"]][:N]
    for r in rows:
        name = Path(r["image"]).name
        shutil.copy(demo_catalog.parent / r["image"], root / "img" / name)
        r["image"] = f"img/{name}"
    local = root / "local.csv"
    _write(local, ["id", "title", "image"], [[r["id"], r["title"], r["image"]] for r in rows])
    return root, rows, local


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _url_catalog(root: Path, rows: list[dict], base: str, name: str = "remote.csv", column: str = "image") -> Path:
    return _write(root / name, ["id", "title", column], [[r["id"], r["title"], f"{base}/{r['image']}"] for r in rows])


def _score(catalog, bundle, out, *extra: str) -> None:
    main(["score", str(catalog), "--bundle", str(bundle), "--out", str(out), "--quiet", "--batch-size", "8", *extra])


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ATTRX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_urls_score_as_local_files_do_and_a_second_run_fetches_nothing(site, bundle, tmp_path, cache):
    root, rows, local = site
    host = ImageHost(root, latency_ms=20)
    try:
        _score(local, bundle, tmp_path / "local.jsonl")
        remote = _url_catalog(root, rows, host.url)
        _score(remote, bundle, tmp_path / "remote.jsonl")
        assert _rows(tmp_path / "remote.jsonl") == _rows(tmp_path / "local.jsonl")
        assert host.stats()["ok"] == N and _errors(tmp_path / "remote.jsonl") == []
        host.reset()
        _score(remote, bundle, tmp_path / "again.jsonl")  # no max-age: each image revalidated, none sent
        s = host.stats()
        assert s.get("ok", 0) == 0 and s["not_modified"] == N == s["conditional"]
        assert _rows(tmp_path / "again.jsonl") == _rows(tmp_path / "local.jsonl")
    finally:
        host.stop()
    fresh = ImageHost(root, max_age=3600)  # fresh entries: not even a revalidation
    try:
        remote = _url_catalog(root, rows, fresh.url, "fresh.csv")
        _score(remote, bundle, tmp_path / "f1.jsonl")
        fresh.reset()
        _score(remote, bundle, tmp_path / "f2.jsonl")
        assert fresh.stats().get("requests", 0) == 0
    finally:
        fresh.stop()


def test_faults_every_row_is_in_the_output_or_the_errors(site, bundle, tmp_path, cache):
    root, rows, _ = site
    host = ImageHost(root, transient_rate=0.25, transient_failures=2, permanent_rate=0.15)
    try:
        remote = _url_catalog(root, rows, host.url)
        out = tmp_path / "out.jsonl"
        _score(remote, bundle, out, "--fetch-retries", "3")
        stats = host.stats()
    finally:
        host.stop()
    transient = {r["id"] for r in rows if chosen(r["image"], 0.25, "t")}
    permanent = {r["id"] for r in rows if r["id"] not in transient and chosen(r["image"], 0.15, "p")}
    assert transient and permanent and stats["transient"] == 2 * len(transient)
    errors = _errors(out)
    assert {e["id"] for e in errors} == permanent  # every transient one succeeded on retry
    assert all(e["status"] == 404 and e["tries"] == 1 and e["url"].startswith(host.url) for e in errors)
    assert {r["id"] for r in _rows(out)} == {r["id"] for r in rows} - permanent


def test_title_only_scores_a_product_whose_image_is_gone_from_its_title(site, bundle, tmp_path, cache):
    root, rows, _ = site
    host = ImageHost(root, permanent_rate=0.3)
    try:
        out = tmp_path / "out.jsonl"
        _score(_url_catalog(root, rows, host.url), bundle, out, "--on-image-error", "title-only")
    finally:
        host.stop()
    gone = {r["id"] for r in rows if chosen(r["image"], 0.3, "p") and r["title"]}
    got = {r["id"]: r for r in _rows(out)}
    assert gone and set(got) == {r["id"] for r in rows}
    for pid, row in got.items():
        if pid in gone:
            assert "HTTP 404" in row["image_error"]
            assert all(row[f"{a}_situation"].endswith("no_image") for a in ATTRS)
        else:
            assert row["image_error"] is None and all(row[f"{a}_situation"].endswith("+image") for a in ATTRS)


def test_resume_fetches_only_what_the_output_lacks(site, bundle, tmp_path):
    root, rows, _ = site
    host = ImageHost(root)
    try:
        half = _url_catalog(root, rows[: N // 2], host.url, "half.csv")
        out = tmp_path / "out.jsonl"
        _score(half, bundle, out, "--image-cache", "none")
        host.reset()
        _score(_url_catalog(root, rows, host.url), bundle, out, "--image-cache", "none", "--resume")
        assert host.stats()["ok"] == N - N // 2
    finally:
        host.stop()
    assert sorted(r["id"] for r in _rows(out)) == sorted(r["id"] for r in rows)


def test_a_merchant_feed_by_url_with_its_own_column_names(site, bundle, tmp_path, cache):
    root, rows, local = site
    host = ImageHost(root)
    try:
        feed = _url_catalog(root, rows, host.url, "feed.csv", column="image_link")
        _score(f"{host.url}/feed.csv", bundle, tmp_path / "feed.jsonl", "--columns", "image=image_link")
        _score(f"{host.url}/local.csv", bundle, tmp_path / "relative.jsonl")  # relative paths: against the URL
    finally:
        host.stop()
    assert feed.exists()
    _score(local, bundle, tmp_path / "local.jsonl")
    assert _rows(tmp_path / "feed.jsonl") == _rows(tmp_path / "local.jsonl") == _rows(tmp_path / "relative.jsonl")


def test_parquet_with_the_image_bytes_inside(site, bundle, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, rows, local = site
    table = pa.table({"id": [r["id"] for r in rows], "title": [r["title"] for r in rows],
                      "image": pa.array([(root / r["image"]).read_bytes() for r in rows], pa.binary())})
    pq.write_table(table, tmp_path / "inline.parquet")
    _score(tmp_path / "inline.parquet", bundle, tmp_path / "inline.jsonl")
    _score(local, bundle, tmp_path / "local.jsonl")
    assert _rows(tmp_path / "inline.jsonl") == _rows(tmp_path / "local.jsonl")


# -- S3: moto's standalone server on 127.0.0.1 --------------------------------------------------
@pytest.fixture()
def s3(monkeypatch):
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("moto[server] (the dev extra) is the S3-compatible server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": url}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    yield env
    proc.terminate()
    proc.wait(10)


def test_an_s3_parquet_catalog_scores_as_local_files_locally_and_on_ray(site, bundle, tmp_path, s3, cache):
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, rows, local = site
    client = boto3.client("s3")
    client.create_bucket(Bucket="shop")
    for r in rows:
        client.upload_file(str(root / r["image"]), "shop", r["image"])
    table = pa.table({"id": [r["id"] for r in rows], "title": [r["title"] for r in rows],
                      "image": [f"s3://shop/{r['image']}" for r in rows]})
    pq.write_table(table, tmp_path / "cat.parquet")
    client.upload_file(str(tmp_path / "cat.parquet"), "shop", "catalogs/cat.parquet")
    _score(local, bundle, tmp_path / "local.jsonl")
    _score("s3://shop/catalogs/cat.parquet", bundle, tmp_path / "s3.jsonl")
    assert _rows(tmp_path / "s3.jsonl") == _rows(tmp_path / "local.jsonl")
    pytest.importorskip("ray.data", reason="Ray Data is the optional extra attrx[ray]")
    r = subprocess.run([EXE, "score", "s3://shop/catalogs/cat.parquet", "--bundle", str(bundle), "--out",
                        str(tmp_path / "ray.jsonl"), "--ray", "--ray-local-cpus", "2", "--batch-size", "8", "--quiet",
                        "--image-cache", "none"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **s3})
    assert r.returncode == 0, r.stderr[-3000:]
    from attrx.service.scoring.ray_data import data_files

    ray_rows = {x["id"]: x for p in data_files(tmp_path / "ray.jsonl") for x in _rows(p)}
    want = {x["id"]: x for x in _rows(tmp_path / "local.jsonl")}
    assert set(ray_rows) == set(want)
    for pid, row in want.items():
        for a in ATTRS:
            assert ray_rows[pid][a] == row[a] and ray_rows[pid][f"{a}_accepted"] == row[f"{a}_accepted"]


def test_ray_workers_fetch_their_own_images_over_http(site, bundle, tmp_path):
    pytest.importorskip("ray.data", reason="Ray Data is the optional extra attrx[ray]")
    root, rows, local = site
    host = ImageHost(root, transient_rate=0.2, permanent_rate=0.1)
    try:
        remote = _url_catalog(root, rows, host.url)
        r = subprocess.run([EXE, "score", str(remote), "--bundle", str(bundle), "--out", str(tmp_path / "ray.jsonl"),
                            "--ray", "--ray-local-cpus", "2", "--batch-size", "8", "--quiet", "--image-cache", "none"],
                           capture_output=True, text=True, timeout=300)
    finally:
        host.stop()
    assert r.returncode == 0, r.stderr[-3000:]
    from attrx.service.scoring.ray_data import ERRORS, data_files

    transient = {x["id"] for x in rows if chosen(x["image"], 0.2, "t")}
    permanent = {x["id"] for x in rows if x["id"] not in transient and chosen(x["image"], 0.1, "p")}
    got = {x["id"] for p in data_files(tmp_path / "ray.jsonl") for x in _rows(p)}
    errors = [e for p in (tmp_path / "ray.jsonl" / ERRORS).glob("*.jsonl") for e in _rows(p)]
    assert got == {x["id"] for x in rows} - permanent
    assert {e["id"] for e in errors} == permanent and all(e["status"] == 404 for e in errors)
