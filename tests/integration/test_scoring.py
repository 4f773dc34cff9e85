"""`attrx score` on real catalog files with the real tiny bundle."""

import base64
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import ATTRS, long_catalog

from attrx.cli import main


def _read(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(x) for x in path.read_text().splitlines()]
    if path.suffix == ".csv":
        return list(csv.DictReader(open(path)))
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_score_writes_rows_and_errors(messy_catalog, bundle, tmp_path, ext, capsys):
    out = tmp_path / f"pred{ext}"
    main(["score", str(messy_catalog), "--bundle", str(bundle), "--out", str(out), "--batch-size", "8", "--quiet"])
    rows = _read(out)
    assert len(rows) == 40 and len({r["id"] for r in rows}) == 40
    for a in ATTRS:
        assert {f"{a}", f"{a}_confidence", f"{a}_accepted", f"{a}_text_weight", f"{a}_image_weight"} <= set(rows[0])
    errors = [json.loads(x) for x in Path(str(out) + ".errors.jsonl").read_text().splitlines()]
    assert {(e["line"], e["id"]) for e in errors} == {(22, "bad-corrupt"), (23, "bad-missing"), (24, "bad-empty")}
    assert all(e["reason"] for e in errors)
    assert "scored 40, failed 3" in capsys.readouterr().out


def test_score_matches_the_http_service(messy_catalog, bundle, server, tmp_path):
    out = tmp_path / "pred.jsonl"
    main(["score", str(messy_catalog), "--bundle", str(bundle), "--out", str(out), "--quiet"])
    row = _read(out)[0]
    first = next(csv.DictReader(open(messy_catalog)))
    body = {"title": first["title"] or None,
            "image_base64": base64.b64encode(Path(first["image"]).read_bytes()).decode() if first["image"] else None}
    preds = httpx.post(server.url + "/v1/extract", json=body, timeout=10).json()["predictions"]
    for a in ATTRS:
        assert row[a] == preds[a]["value"]
        assert row[f"{a}_confidence"] == pytest.approx(preds[a]["confidence"], abs=1e-5)
        assert row[f"{a}_accepted"] == preds[a]["accepted"]


def test_existing_output_needs_resume_or_overwrite(messy_catalog, bundle, tmp_path):
    out = tmp_path / "pred.csv"
    out.write_text("id\n")
    with pytest.raises(SystemExit, match="--resume continues it, --overwrite replaces it"):
        main(["score", str(messy_catalog), "--bundle", str(bundle), "--out", str(out), "--quiet"])
    with pytest.raises(SystemExit, match="unknown output format"):
        main(["score", str(messy_catalog), "--bundle", str(bundle), "--out", str(tmp_path / "x.xlsx"), "--quiet"])


@pytest.mark.parametrize("ext", [".jsonl", ".csv"])
def test_interrupted_run_then_resume_has_every_id_once(demo_catalog, bundle, tmp_path, ext):
    cat, ids = long_catalog(demo_catalog, tmp_path)  # long enough to interrupt
    out = tmp_path / f"pred{ext}"
    exe = str(Path(sys.executable).parent / "attrx")
    log_file = tmp_path / "score.log"
    with open(log_file, "w") as lf:  # a file, not a pipe: the test waits on the process, not on EOF
        proc = subprocess.Popen([exe, "score", str(cat), "--bundle", str(bundle), "--out", str(out),
                                 "--batch-size", "4", "--workers", "1", "--quiet"], stdout=lf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 2000):
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    log = log_file.read_text()
    assert proc.returncode != 0 and "interrupted: rerun with --resume" in log, log
    # nothing of the run survives it: no orphaned decoding worker
    def survivors():
        found = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if str(cat).encode() in (d / "cmdline").read_bytes():
                        found.append(int(d.name))
                except OSError:
                    pass
        return found

    end = time.monotonic() + 10
    while survivors() and time.monotonic() < end:
        time.sleep(0.1)
    assert not survivors()
    partial = _read(out)
    assert 0 < len(partial) < len(ids)
    with open(out, "a") as f:  # as if killed in the middle of a line
        f.write('{"id": "half-writ' if ext == ".jsonl" else "half-writ")
    main(["score", str(cat), "--bundle", str(bundle), "--out", str(out), "--resume", "--quiet"])
    final = [r["id"] for r in _read(out)]
    assert len(final) == len(set(final)) == len(ids) and set(final) == set(ids)
    assert final[: len(partial)] == [r["id"] for r in partial]  # kept, not rescored


def test_parquet_output_survives_kill_9_and_resumes(demo_catalog, bundle, tmp_path):
    from attrx.service.scoring.outputs import partial_path

    cat, ids = long_catalog(demo_catalog, tmp_path)
    out = tmp_path / "pred.parquet"
    exe = str(Path(sys.executable).parent / "attrx")
    proc = subprocess.Popen([exe, "score", str(cat), "--bundle", str(bundle), "--out", str(out),
                             "--batch-size", "4", "--workers", "1", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    partial = partial_path(out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not partial.exists() or partial.stat().st_size < 4000):
        time.sleep(0.02)
    import os

    os.killpg(proc.pid, signal.SIGKILL)  # the scorer and its decoding workers, no chance to clean up
    proc.wait(timeout=30)
    assert not out.exists() and partial.exists()
    kept = [json.loads(x)["id"] for x in partial.read_text().splitlines() if x.endswith("}")]
    assert kept
    with pytest.raises(SystemExit, match="--resume continues it"):
        main(["score", str(cat), "--bundle", str(bundle), "--out", str(out), "--quiet"])
    main(["score", str(cat), "--bundle", str(bundle), "--out", str(out), "--resume", "--quiet"])
    final = [r["id"] for r in _read(out)]
    assert len(final) == len(set(final)) == len(ids) and final[: len(kept)] == kept
    assert not partial.exists()


def test_resume_refuses_another_bundle_or_options(messy_catalog, bundle, tmp_path):
    import shutil

    out = tmp_path / "pred.jsonl"
    args = ["score", str(messy_catalog), "--bundle", str(bundle), "--out", str(out), "--quiet"]
    main(args)
    other = tmp_path / "other-bundle"
    shutil.copytree(bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["version"] = "9.9.9"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="written with another bundle or options.*bundle_sha256"):
        main(["score", str(messy_catalog), "--bundle", str(other), "--out", str(out), "--resume", "--quiet"])
    targets = manifest["precision_targets"]
    if len(targets) > 1:
        with pytest.raises(SystemExit, match="min_precision"):
            main([*args, "--resume", "--min-precision", str(targets[1])])
    main([*args, "--resume"])  # the same bundle and options: fine (nothing left to do)
    (tmp_path / "pred.jsonl.meta.json").unlink()
    with pytest.raises(SystemExit, match="no pred.jsonl.meta.json records"):
        main([*args, "--resume"])
    main([*args, "--overwrite"])
    assert len(_read(out)) == 40
