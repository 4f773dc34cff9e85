"""`attrx score --ray` on a real local Ray (2 CPUs) against `attrx score`, with the real tiny bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import long_catalog

pytest.importorskip("ray.data", reason="Ray Data is the optional extra attrx[ray]")

EXE = str(Path(sys.executable).parent / "attrx")


def _score(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "score", *args, "--quiet"], capture_output=True, text=True, timeout=timeout)


def _ray(catalog: Path, bundle: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _score(str(catalog), "--bundle", str(bundle), "--out", str(out), "--ray", "--ray-local-cpus", "2",
                  "--batch-size", "8", *extra)


def _rows(out: Path) -> list[dict]:
    from attrx.service.scoring.ray_data import data_files

    rows = []
    for p in data_files(out):
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows += pq.read_table(p).to_pylist()
        else:
            rows += [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return rows


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_ray_scores_exactly_what_attrx_score_does(messy_catalog, bundle, tmp_path, fmt):
    ref, ref_q, ray_q = tmp_path / "ref.jsonl", tmp_path / "ref-queue.jsonl", tmp_path / "ray-queue.jsonl"
    r = _score(str(messy_catalog), "--bundle", str(bundle), "--out", str(ref), "--batch-size", "32",
               "--review-queue", str(ref_q))
    assert r.returncode == 0, r.stderr[-2000:]
    # parquet: said by the flag, into a folder without a suffix; jsonl: said by OUT's name alone
    out, flags = (tmp_path / "ray-out", ["--ray-format", fmt]) if fmt == "parquet" else (tmp_path / "ray.jsonl", [])
    r = _ray(messy_catalog, bundle, out, *flags, "--review-queue", str(ray_q))
    assert r.returncode == 0, r.stderr[-3000:]
    from attrx.service.scoring.ray_data import FORMATS, data_files

    assert {f.suffix for f in data_files(out)} == {FORMATS[fmt]}
    assert "scored 40, failed 3" in r.stdout, r.stdout
    expected = [json.loads(x) for x in ref.read_text().splitlines()]
    got = _rows(out)
    # the same columns in the same order, and the same values: ids, predictions, confidences, weights
    assert list(got[0]) == list(expected[0])
    assert sorted(got, key=lambda x: x["id"]) == sorted(expected, key=lambda x: x["id"])
    from attrx.service.scoring.ray_data import error_rows

    want = [json.loads(x) for x in Path(str(ref) + ".errors.jsonl").read_text().splitlines()]
    assert sorted(error_rows(out), key=lambda e: e["line"]) == sorted(want, key=lambda e: e["line"])
    assert {e["id"] for e in want} == {"bad-corrupt", "bad-missing", "bad-empty"}
    # the review queue: the same lines as local scoring writes, one per product, the actors' parts joined
    queue = {q["id"]: q for q in map(json.loads, ray_q.read_text().splitlines())}
    assert queue == {q["id"]: q for q in map(json.loads, ref_q.read_text().splitlines())} and queue
    assert len(ray_q.read_text().splitlines()) == len(queue) and not (out / ".review-queue").exists()
    # drift: the actors' partial counts add up to local scoring's, and so does the comparison
    local = json.loads(Path(str(ref) + ".meta.json").read_text())["drift"]
    ray = json.loads((out / "_attrx_meta.json").read_text())["drift"]
    assert ray["items"] == local["items"] == 40 and not (out / "_drift").exists()
    assert ray["counts"]["counts"] == local["counts"]["counts"]
    assert ray["attributes"] == local["attributes"] and ray["inputs"] == local["inputs"]
    # the accuracy estimate: the actors' sums add up to local scoring's
    local_est = json.loads(Path(str(ref) + ".meta.json").read_text())["accuracy_estimate"]
    ray_est = json.loads((out / "_attrx_meta.json").read_text())["accuracy_estimate"]
    assert ray_est["sums"] == local_est["sums"] and ray_est["attributes"] == local_est["attributes"]
    assert local_est["attributes"]["colour"]["all"]["products"] == 40


def test_killed_run_then_resume_has_every_id_once(demo_catalog, bundle, tmp_path):
    from attrx.service.scoring.ray_data import data_files, done_ids_in_folder

    cat, ids = long_catalog(demo_catalog, tmp_path, repeats=8)
    out = tmp_path / "ray-out"
    cmd = [EXE, "score", str(cat), "--bundle", str(bundle), "--out", str(out), "--ray", "--ray-local-cpus", "2",
           "--batch-size", "8", "--quiet"]
    with open(tmp_path / "run.log", "w") as log:
        proc = subprocess.Popen([*cmd, "--ray-block-rows", "32"], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(data_files(out)) < 2 and proc.poll() is None:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started: no clean-up at all
        proc.wait(timeout=30)
    # a Ray worker outside the process group can still finish the block it was writing: count the
    # complete files once they have stopped changing
    seen, still = None, time.monotonic()
    while time.monotonic() - still < 2 and time.monotonic() < deadline + 30:
        now = [(f.name, f.stat().st_size) for f in data_files(out)]
        if now != seen:
            seen, still = now, time.monotonic()
        time.sleep(0.1)
    # the ids of the complete files: a file the kill cut short has no footer and is dropped, as
    # --resume drops it (reading it as it is would fail on a kill that lands mid-write)
    kept = done_ids_in_folder(out)
    assert 0 < len(kept) < len(ids), (tmp_path / "run.log").read_text()[-3000:]
    # and one file cut short, as a kill in the middle of a write leaves it
    first = data_files(out)[0]
    (out / ("zz-cut-short" + first.suffix)).write_bytes(first.read_bytes()[:200])
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    final = [x["id"] for x in _rows(out)]
    assert len(final) == len(set(final)), "an id was scored twice"
    assert set(final) == set(ids), f"{len(set(ids) - set(final))} ids missing"
    assert f"skipped {len(kept)} already in" in r.stdout, r.stdout


def test_resume_refuses_other_options_and_needs_an_intent(messy_catalog, bundle, tmp_path):
    out = tmp_path / "ray-out"
    assert _ray(messy_catalog, bundle, out).returncode == 0
    r = _ray(messy_catalog, bundle, out)
    assert r.returncode != 0 and "--resume continues it" in r.stderr, r.stderr
    r = _ray(messy_catalog, bundle, out, "--resume", "--variant", "fp32")
    assert r.returncode != 0 and "written with another bundle or options" in r.stderr and "precision" in r.stderr
    r = _ray(messy_catalog, bundle, out, "--resume")
    assert r.returncode == 0 and "scored 0, failed 3, skipped 40" in r.stdout, r.stdout + r.stderr


def test_without_ray_the_error_says_what_to_install(messy_catalog, bundle, tmp_path, monkeypatch):
    from attrx.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as in a base install: `import ray` fails
    with pytest.raises(SystemExit, match=r"pip install 'attrx\[ray\]'"):
        main(["score", str(messy_catalog), "--bundle", str(bundle), "--out", str(tmp_path / "o"), "--ray"])


def test_flags_of_the_other_mode_are_refused(messy_catalog, bundle, tmp_path, capsys):
    from attrx.cli import main

    args = ["score", str(messy_catalog), "--bundle", str(bundle), "--out", str(tmp_path / "o")]
    for flags, says in ((["--ray-concurrency", "2", "--ray-format", "jsonl"],
                         "without --ray, --ray-concurrency, --ray-format would be ignored"),
                        (["--ray", "--workers", "2"], "--workers sizes local decoding")):
        with pytest.raises(SystemExit) as e:
            main([*args, *flags])
        assert e.value.code == 2 and says in capsys.readouterr().err  # a usage error
    assert not (tmp_path / "o").exists()


def test_the_base_install_does_not_need_ray():
    import tomllib

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert not any(d.lower().startswith("ray") for d in project["dependencies"])
    assert any(d.startswith("ray[data]") for d in project["optional-dependencies"]["ray"])
    for path in (root / "service").rglob("*.py"):  # imported lazily, only by the --ray path
        text = path.read_text()
        assert "\nimport ray" not in text and "\nfrom ray" not in text, path


def test_out_name_and_format_must_agree(messy_catalog, bundle, tmp_path):
    """`--out x.jsonl` writes JSON Lines (not Parquet under a .jsonl name); a name that says another
    format than --ray-format, or one Ray cannot write, is refused before anything runs."""
    from attrx.service.scoring.ray_data import output_format

    assert output_format("x.jsonl", None) == "jsonl" and output_format("x.parquet", None) == "parquet"
    assert output_format("x", None) == "parquet" and output_format("x", "jsonl") == "jsonl"
    for out, flags, said in [("x.jsonl", ["--ray-format", "parquet"], "the name says jsonl but --ray-format is parquet"),
                             ("x.csv", [], "name it x.parquet, x.jsonl or without a suffix")]:
        r = _ray(messy_catalog, bundle, tmp_path / out, *flags)
        assert r.returncode != 0 and said in r.stderr, r.stderr[-2000:]
        assert not (tmp_path / out).exists()
