"""A situation-calibrated bundle, served and scored: each answer names its situation and is held to
that situation's threshold; title-image conflicts are flagged and written by `attrx score --conflicts`."""

import csv
import json
import shutil

import httpx
import pytest
from helpers import ATTRS, server_factory

from attrx.cli import main
from attrx.service.contract.bundle import load_bundle


def _situational(calib: dict, classes: dict[str, list[str]]) -> dict:
    """The hand-written per-class thresholds for titles that name a label; twice as strict (capped
    at 1) where the title is silent; no title: no support (never accepted). pattern gets a conflict
    check that flags every product with both a title and an image."""
    def stricter(ths):
        return [None if t is None else min(1.0, 2 * t) for t in ths]

    sits = {}
    for a in classes:
        named = {"support": 200, "natural": 200, "thresholds": calib["thresholds"][a]}
        silent = {"support": 200, "natural": 20,
                  "thresholds": {k: stricter(v) for k, v in calib["thresholds"][a].items()}}
        sits[a] = {"named+image": named, "named+no_image": named, "silent+image": silent, "silent+no_image": silent}
    return {**calib, "situations": sits, "label_words": classes, "folded_class": {a: None for a in classes},
            "constraints": None, "conflict": {a: None for a in classes} | {
                "pattern": {"min_title_confidence": 0.0, "max_image_probability": 1.0}}}


@pytest.fixture(scope="module")
def situational_bundle(checkpoint, tmp_path_factory):
    from attrx.export.build import export_bundle

    ck = tmp_path_factory.mktemp("sit") / "ck"
    shutil.copytree(checkpoint, ck)
    classes = json.loads((ck / "config.json").read_text())["attributes"]
    calib = json.loads((ck / "calibration.json").read_text())
    (ck / "calibration.json").write_text(json.dumps(_situational(calib, classes)))
    return export_bundle(ck, ck.parent / "bundle", name="situational").path


@pytest.fixture(scope="module")
def sit_server(situational_bundle):
    start, servers = server_factory(situational_bundle)
    yield start()
    for s in servers:
        s.stop()


def _answer(server, title, image):
    if image is None:
        r = httpx.post(f"{server.url}/v1/extract", json={"title": title}, timeout=30)
    else:
        r = httpx.post(f"{server.url}/v1/extract", data={"title": title} if title else {},
                       files={"image": ("p.jpg", image, "image/jpeg")}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_a_silent_title_is_answered_with_the_silent_situations_threshold(sit_server, situational_bundle,
                                                                            demo_catalog):
    m = load_bundle(situational_bundle).manifest
    colour = m.attribute("colour")
    image = next(p for p in csv.DictReader(open(demo_catalog)) if p["image"])
    jpeg = (demo_catalog.parent / image["image"]).read_bytes()
    for title, situation in ((f"Roadster Men {colour.classes[0].title()} Striped Tee", "named+image"),
                             ("Roadster Men Striped Tee", "silent+image")):
        p = _answer(sit_server, title, jpeg)["colour"]
        assert p["situation"] == situation
        want = colour.situations[situation].thresholds["0.90"][colour.classes.index(p["value"])]
        assert p["threshold"] == want
        assert p["accepted"] == (want is not None and p["confidence"] >= want)
        assert p["review"] == (None if p["accepted"] else ("no_support" if want is None else "below_threshold"))
    p = _answer(sit_server, None, jpeg)["colour"]  # no title: that situation had no support
    assert p["situation"] == "no_title+image" and p["threshold"] is None and not p["accepted"]
    assert p["review"] == "no_support"


def test_conflicts_are_flagged_never_accepted_and_named(sit_server, demo_catalog):
    image = next(p for p in csv.DictReader(open(demo_catalog)) if p["image"])
    jpeg = (demo_catalog.parent / image["image"]).read_bytes()
    p = _answer(sit_server, image["title"], jpeg)["pattern"]
    assert p["conflict"] and not p["accepted"] and p["review"] == "conflict"
    assert set(p["conflict_values"]) == {"title_says", "image_says"}
    assert not _answer(sit_server, image["title"], None)["pattern"]["conflict"]  # needs both


def test_model_info_lists_thresholds_and_support_per_situation(sit_server, server):
    info = httpx.get(f"{sit_server.url}/v1/model").json()
    assert info["situation_calibrated"] is True
    colour = next(a for a in info["attributes"] if a["name"] == "colour")
    assert set(colour["situations"]) == {"named+image", "named+no_image", "silent+image", "silent+no_image"}
    assert colour["situations"]["silent+image"]["support"] == 200
    old = httpx.get(f"{server.url}/v1/model").json()  # a bundle calibrated before situations
    assert old["situation_calibrated"] is False and all(a["situations"] is None for a in old["attributes"])


def test_score_writes_situations_and_conflicts(situational_bundle, demo_catalog, tmp_path):
    out, conflicts = tmp_path / "scored.csv", tmp_path / "conflicts.jsonl"
    main(["score", str(demo_catalog), "--bundle", str(situational_bundle), "--out", str(out),
          "--conflicts", str(conflicts), "--quiet"])
    rows = list(csv.DictReader(open(out)))
    both = {r["id"] for r in csv.DictReader(open(demo_catalog)) if r["title"] and r["image"]}
    assert {r[f"{a}_situation"] for r in rows for a in ATTRS} <= {
        "named+image", "silent+image", "no_title+image", "named+no_image", "silent+no_image"}
    flagged = [json.loads(line) for line in conflicts.read_text().splitlines()]
    assert {f["id"] for f in flagged} == both and {f["attribute"] for f in flagged} == {"pattern"}
    assert all(r["pattern_accepted"] == "False" for r in rows if r["id"] in both)
