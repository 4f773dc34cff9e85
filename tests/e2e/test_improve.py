"""`attrx improve` (issue 23): a checkpoint fine-tuned on its catalog plus reviewed corrections.

Reviewed products train (a corrected training product with the reviewed values, a product new to
the catalog as well); a reviewed product in the validation or test split is left out; thresholds
are recalibrated on the validation split; the checkpoint it started from is left as it was; the
before/after table covers every attribute and situation of the test split.
"""

from __future__ import annotations

import csv
import json
import shutil

from attrx.cli import main
from attrx.service.review.store import Answer, DecisionStore
from attrx.training.data.encode import split_of
from attrx.training.models.checkpoint import load_checkpoint

ATTRS = ["category", "colour", "pattern", "gender"]


def _corrections(demo_catalog, tmp_path, sp: dict):
    """A decisions store as attrx review leaves it: answers on 6 training products (one attribute
    corrected, one skipped), 2 test products and 1 product the catalog does not hold."""
    rows = list(csv.DictReader(open(demo_catalog)))
    train = [r for r in rows if split_of(r["id"], **sp) == "train"][:6]
    test = [r for r in rows if split_of(r["id"], **sp) == "test"][:2]
    store = DecisionStore(tmp_path / "decisions.sqlite")
    image_dir = demo_catalog.parent
    new = {**train[0], "id": "new-product-1"}
    for r in [*train, *test, new]:
        answers = [Answer("colour", "correct", "red", r["colour"], 0.4), Answer("pattern", "skip", None, "solid", 0.3)]
        store.record(r["id"], "alice", answers, r["title"], str(image_dir / r["image"]) if r["image"] else None)
    store.close()
    return tmp_path / "decisions.sqlite", {r["id"] for r in train} | {"new-product-1"}, {r["id"] for r in test}


def test_improve_trains_on_reviewed_products_and_recalibrates_on_validation(trained_checkpoint, demo_catalog,
                                                                            tmp_path):
    ck = load_checkpoint(trained_checkpoint)
    before_calibration = (trained_checkpoint / "calibration.json").read_bytes()
    db, used, held_out = _corrections(demo_catalog, tmp_path, ck.meta["split"])
    out = tmp_path / "improved"
    main(["improve", "--checkpoint", str(trained_checkpoint), str(demo_catalog), "--corrections",
          str(db), "--out", str(out), "--epochs", "1", "--threads", "2", "--quiet"])
    new = load_checkpoint(out)
    info = new.meta["improved_from"]
    assert info["checkpoint"] == str(trained_checkpoint) and info["trusted_weight"] == 2.0
    assert info["reviewed_used"] == len(used) and info["reviewed_in_val_or_test_left_out"] == len(held_out)
    assert new.classes == ck.classes and new.meta["split"] == ck.meta["split"]
    exported = {r["id"]: r for r in csv.DictReader(open(out / "corrections.csv"))}
    assert set(exported) == used | held_out and all(r["colour"] == "red" and r["pattern"] == "" for r in exported.values())
    calib = json.loads((out / "calibration.json").read_text())
    assert calib["rows"]["natural"] == ck.meta["counts"]["val"]  # the validation split, nothing reviewed
    assert (trained_checkpoint / "calibration.json").read_bytes() == before_calibration  # the old one is untouched
    table = json.loads((out / "improvement.json").read_text())
    assert set(table["attributes"]) == set(ATTRS)
    for rows in table["attributes"].values():
        assert "all" in rows and all({"accuracy_before", "accuracy_after", "coverage_before", "coverage_after",
                                      "precision_before", "precision_after"} <= set(r) for r in rows.values())
    assert (out / "eval-before" / "metrics.json").is_file() and (out / "metrics.json").is_file()
    # the same corrections as a catalog file work too, and --out may not be the checkpoint itself
    again = tmp_path / "again"
    shutil.copyfile(out / "corrections.csv", tmp_path / "c.csv")
    main(["improve", "--checkpoint", str(trained_checkpoint), str(demo_catalog), "--corrections",
          str(tmp_path / "c.csv"), "--out", str(again), "--epochs", "1", "--no-eval", "--quiet"])
    assert load_checkpoint(again).meta["improved_from"]["reviewed_used"] == len(used)
    assert not (again / "improvement.json").exists()
