"""attrx eval on other catalogs and under test conditions; single-modality models; --report."""

import csv
import json

import pytest

from attrx.cli import main
from attrx.service.contract.situations import strip_words


def test_strip_words_is_whole_word_case_insensitive_longest_first():
    words = ["Blue", "Navy Blue", "Red", "Off White"]
    assert strip_words("Roadster Men NAVY blue Striped T-Shirt", words) == "Roadster Men Striped T-Shirt"
    assert strip_words("Red Tape Men Redwood Shoes, off white", words) == "Tape Men Redwood Shoes,"
    assert strip_words("Blue", words) is None and strip_words(None, words) is None


def test_split_all_and_split_test_count_the_same_classes(checkpoint, demo_catalog):
    """recall@precision counts the classes with enough validation support (the thresholds'
    support) under --split all as under --split test, not every class that has enough rows."""
    from attrx.training.evaluation.evaluate import evaluate

    calib = json.loads((checkpoint / "calibration.json").read_text())
    classes = json.loads((checkpoint / "config.json").read_text())["attributes"]
    for split in ("test", "all"):
        res = evaluate(checkpoint, demo_catalog, out=checkpoint / "eval" / f"cmp-{split}", progress=False,
                       min_positives=5, split=split)
        for a, r in res["attributes"].items():
            counted = set(r["recall_at_precision"]["0.90"]["per_class"])
            thin = {c for i, c in enumerate(classes[a]) if calib["support"][a][i] < 5}
            assert not counted & thin, (split, a)
    assert (checkpoint / "calibration.json").read_text() == json.dumps(calib, indent=2)


def test_eval_on_another_catalog_counts_unseen_labels_separately(checkpoint, demo_catalog, tmp_path):
    rows = list(csv.DictReader(open(demo_catalog)))[:60]
    for r in rows[:7]:
        r["colour"] = "magenta"  # a colour the model has no class for
    other = tmp_path / "other.csv"
    with open(other, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            r["image"] = str(demo_catalog.parent / r["image"]) if r["image"] else ""
            w.writerow(r)
    calib_before = (checkpoint / "calibration.json").read_bytes()
    main(["eval", "--checkpoint", str(checkpoint), str(other), "--split", "all", "--quiet",
          "--min-positives", "1"])
    m = json.loads((checkpoint / "eval" / "all-other" / "metrics.json").read_text())
    colour = m["attributes"]["colour"]
    assert m["split"] == "all" and colour["n_test"] == 60
    assert colour["unseen_labels"] == {"count": 7, "labels": {"magenta": 7}}
    assert colour["accuracy"] <= colour["accuracy_seen_labels"] * 53 / 60 + 1e-9  # unseen ones count wrong
    assert (checkpoint / "calibration.json").read_bytes() == calib_before  # the checkpoint's thresholds stay


@pytest.mark.parametrize("flag", ["--drop-image", "--drop-title", "--strip-label-words"])
def test_conditions(checkpoint, demo_catalog, tmp_path, flag):
    args = [flag] + (["colour,pattern"] if flag == "--strip-label-words" else [])
    report = tmp_path / "report"
    main(["eval", "--checkpoint", str(checkpoint), str(demo_catalog), *args, "--quiet",
          "--min-positives", "1", "--out", str(tmp_path / "ev"), "--report", str(report)])
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    if flag == "--strip-label-words":
        assert m["conditions"]["strip_label_words"] == ["colour", "pattern"]
        assert m["attributes"]["colour"]["n_title_lacks_label"] == m["attributes"]["colour"]["n_test"]
    else:
        assert m["attributes"]["colour"]["mean_image_weight"] is None  # no product has both any more
        from attrx.training.data.encode import split_of

        other = "image" if flag == "--drop-title" else "title"  # rows without it have nothing left
        expected = sum(1 for r in csv.DictReader(open(demo_catalog))
                       if split_of(r["id"], 0.2, 0.2) == "test" and not r[other])
        assert m["conditions"]["rows_excluded_nothing_left"] == expected
    assert not (tmp_path / "ev" / "calibration.json").exists()
    text = (report / "summary.md").read_text()
    assert "| colour |" in text and (report / "accuracy.png").is_file() and (report / "image_weights.png").is_file()


def test_rare_classes_fold_into_other(checkpoint):
    from attrx.service.catalog.reader import Catalog, Product
    from attrx.training.data.encode import OTHER, encode_catalog, label_maps
    from attrx.training.models.checkpoint import load_checkpoint

    prods = [Product(f"p{i}", f"title {i}", None, {"colour": c}, i + 2)
             for i, c in enumerate(["red"] * 12 + ["blue"] * 10 + ["teal"] * 3 + ["ochre"])]
    classes = label_maps(prods, ("colour",), min_count=10)
    assert classes == {"colour": ["blue", "red", OTHER]}
    assert label_maps(prods, ("colour",))["colour"] == ["blue", "ochre", "red", "teal"]  # no folding by default
    ck = load_checkpoint(checkpoint)
    probe = [*prods[:1], Product("x", "t", None, {"colour": "teal"}, 99), Product("y", "t", None, {"colour": "never"}, 100)]
    cat = Catalog(checkpoint, probe, [], ("colour",))
    folded, _ = encode_catalog(cat, ck.tokenizer, ck.preprocess, classes, progress=False, other_for=["colour"])
    assert folded.labels[:, 0].tolist() == [1, 2, 2]  # red; rare teal and never-seen labels -> other
    plain, _ = encode_catalog(cat, ck.tokenizer, ck.preprocess, classes, progress=False)
    assert plain.labels[:, 0].tolist() == [1, -1, -1]  # without folding they are unseen (counted wrong)


def test_the_plain_evaluation_reports_duplicate_images_labelled_otherwise(checkpoint, demo_catalog, tmp_path):
    """metrics.json's label_noise: pairs of products with byte-identical images, and per attribute
    how many disagree (one injected copy of a product's image, with another colour)."""
    import csv

    from attrx.training.evaluation.evaluate import evaluate

    rows = list(csv.DictReader(open(demo_catalog, newline="", encoding="utf-8")))
    for r in rows:
        r["image"] = str(demo_catalog.parent / r["image"]) if r["image"] else ""
    first = next(r for r in rows if r["image"])
    other = next(r["colour"] for r in rows if r["colour"] != first["colour"])
    rows.append(dict(first, id=first["id"] + "-copy", colour=other))
    cat = tmp_path / "catalog.csv"
    with open(cat, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = evaluate(checkpoint, cat, out=tmp_path / "ev", progress=False)
    noise = res["label_noise"]
    assert noise["pairs"] >= 1 and noise["attributes"]["colour"]["disagree"] >= 1
    assert noise["attributes"]["pattern"]["disagree"] <= noise["attributes"]["colour"]["disagree"] - 1
    # and, per situation, what certified its thresholds and what more reviews would (0: certified)
    cert = res["certification"]["colour"]
    assert cert and all(set(c["more_needed"]) == {"0.90", "0.95"} for c in cert.values())
    assert all((c["certified_by"] is None) == all(m != 0 for m in c["more_needed"].values()) for c in cert.values())
