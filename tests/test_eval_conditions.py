"""attrx eval on other catalogs and under test conditions; single-modality models; --report."""

import csv
import json

import numpy as np
import pytest

from attrx.cli import main
from attrx.training.evaluate import strip_words


def test_strip_words_is_whole_word_case_insensitive_longest_first():
    words = ["Blue", "Navy Blue", "Red", "Off White"]
    assert strip_words("Roadster Men NAVY blue Striped T-Shirt", words) == "Roadster Men Striped T-Shirt"
    assert strip_words("Red Tape Men Redwood Shoes, off white", words) == "Tape Men Redwood Shoes,"
    assert strip_words("Blue", words) is None and strip_words(None, words) is None


def test_split_all_and_split_test_count_the_same_classes(checkpoint, demo_catalog):
    """recall@precision counts the classes with enough validation support (the thresholds'
    support) under --split all as under --split test, not every class that has enough rows."""
    from attrx.training.evaluate import evaluate

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
    main(["eval", "--checkpoint", str(checkpoint), "--catalog", str(other), "--split", "all", "--quiet",
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
    main(["eval", "--checkpoint", str(checkpoint), "--catalog", str(demo_catalog), *args, "--quiet",
          "--min-positives", "1", "--out", str(tmp_path / "ev"), "--report", str(report)])
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    if flag == "--strip-label-words":
        assert m["conditions"]["strip_label_words"] == ["colour", "pattern"]
        assert m["attributes"]["colour"]["n_title_lacks_label"] == m["attributes"]["colour"]["n_test"]
    else:
        assert m["attributes"]["colour"]["mean_image_weight"] is None  # no product has both any more
        from attrx.training.data import split_of

        other = "image" if flag == "--drop-title" else "title"  # rows without it have nothing left
        expected = sum(1 for r in csv.DictReader(open(demo_catalog))
                       if split_of(r["id"], 0.2, 0.2) == "test" and not r[other])
        assert m["conditions"]["rows_excluded_nothing_left"] == expected
    assert not (tmp_path / "ev" / "calibration.json").exists()
    text = (report / "summary.md").read_text()
    assert "| colour |" in text and (report / "accuracy.png").is_file() and (report / "image_weights.png").is_file()


@pytest.mark.parametrize("inputs", ["text", "image"])
def test_single_modality_models_ignore_the_other_input_also_when_exported(demo_catalog, tmp_path, inputs):
    import onnxruntime as ort

    from attrx.export.onnx_export import example_inputs
    from attrx.training.checkpoint import load_checkpoint

    ck, out = tmp_path / "ck", tmp_path / "b"
    main(["train", "--inputs", inputs, "--catalog", str(demo_catalog), "--attributes", "colour,gender",
          "--out", str(ck), "--warmup-epochs", "1", "--e2e-epochs", "1", "--tune-epochs", "0", "--quiet",
          "--threads", "2", "--val-frac", "0.2", "--test-frac", "0.2"])
    # a condition that removes the only input the model reads is refused, naming why
    with pytest.raises(SystemExit, match=f"reads only {'titles' if inputs == 'text' else 'images'}.*leaves it nothing"):
        main(["eval", "--checkpoint", str(ck), "--catalog", str(demo_catalog), "--quiet",
              "--drop-image" if inputs == "image" else "--drop-title"])
    # train calibrated the thresholds already: neither --split all nor export needs a plain eval first
    main(["eval", "--checkpoint", str(ck), "--catalog", str(demo_catalog), "--split", "all", "--quiet",
          "--min-positives", "1"])
    main(["export", "--checkpoint", str(ck), "--out", str(out)])
    model = load_checkpoint(ck).model
    feeds = example_inputs(model, 8, model.cfg.preprocess["max_text_len"], 64)
    feeds["text_present"][:] = 1
    feeds["image_present"][:] = 1
    sess = ort.InferenceSession(str(out / "model.onnx"))
    a = sess.run(None, feeds)
    other = dict(feeds)
    if inputs == "text":
        other["pixel_values"] = np.random.default_rng(1).normal(size=feeds["pixel_values"].shape).astype(np.float32)
    else:
        other["input_ids"] = np.roll(feeds["input_ids"], 1, axis=0)
    b = sess.run(None, other)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)  # the ignored input changes nothing
    assert (a[1][:, 0] == (1.0 if inputs == "text" else 0.0)).all()


def test_rare_classes_fold_into_other(checkpoint):
    from attrx.service.catalog.reader import Catalog, Product
    from attrx.training.checkpoint import load_checkpoint
    from attrx.training.data import OTHER, encode_catalog, label_maps

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
