"""Calibration per situation (Mondrian) and constraints learned from a training split."""

import numpy as np
import pytest

from attrx.service.catalog.reader import Product
from attrx.service.contract.situations import SITUATIONS
from attrx.training.evaluation.calibration import calibrate_situations
from attrx.training.evaluation.calibration_set import CalibrationSet
from attrx.training.evaluation.constraint_learning import learn_constraints, read_taxonomy, with_taxonomies

NAMED, SILENT = SITUATIONS.index("named+image"), SITUATIONS.index("silent+image")


def _set(n_named: int, n_silent: int, acc_named: float, acc_silent: float, seed: int = 0) -> CalibrationSet:
    """One attribute, two classes; the model is equally confident everywhere, right acc_* of the time."""
    rng = np.random.default_rng(seed)
    n = n_named + n_silent
    labels = rng.integers(0, 2, n)
    right = np.r_[rng.random(n_named) < acc_named, rng.random(n_silent) < acc_silent]
    pred = np.where(right, labels, 1 - labels)
    conf = rng.uniform(0.9, 1.0, n)
    probs = np.stack([np.where(pred == 0, conf, 1 - conf), np.where(pred == 1, conf, 1 - conf)], 1)
    sits = np.r_[np.full(n_named, NAMED), np.full(n_silent, SILENT)][:, None]
    return CalibrationSet({"probs": [probs], "text": [probs], "image": [probs]}, labels[:, None], sits,
                          np.ones((n, 1), dtype=bool), np.zeros((n, 1), dtype=bool), np.zeros(n, dtype=int))


def test_a_silent_situation_gets_its_own_stricter_threshold():
    cs = _set(2000, 2000, acc_named=0.99, acc_silent=0.80)
    doc = calibrate_situations(cs, {"colour": ["red", "blue"]}, None, (0.90,))
    named = doc["situations"]["colour"]["named+image"]["thresholds"]["0.90"]
    silent = doc["situations"]["colour"]["silent+image"]["thresholds"]["0.90"]
    # named: every confidence is precise enough, the lowest threshold wins; silent: the model is as
    # confident but right 80% of the time, so no threshold reaches 0.90 (never accepted)
    assert all(t is not None and t < 0.91 for t in named)
    assert all(t is None for t in silent)


def test_a_situation_without_support_is_left_out_by_the_bound_rule():
    cs = _set(2000, 20, acc_named=0.99, acc_silent=0.99)
    doc = calibrate_situations(cs, {"colour": ["red", "blue"]}, None, (0.90,), min_situation_support=50, delta=None)
    assert set(doc["situations"]["colour"]) == {"named+image"}
    assert doc["situations"]["colour"]["named+image"]["support"] == 2000


@pytest.mark.parametrize(("acc_silent", "leans"), [(0.99, True), (0.3, False)])
def test_a_small_situation_leans_on_its_certified_attribute_unless_its_rows_contradict(acc_silent, leans):
    cs = _set(2000, 30, acc_named=0.99, acc_silent=acc_silent)
    doc = calibrate_situations(cs, {"colour": ["red", "blue"]}, None, (0.90,), min_situation_support=50)
    named, silent = (doc["situations"]["colour"][s] for s in ("named+image", "silent+image"))
    assert named["certified_by"] == "situation" and named["more_needed"] == {"0.90": 0}
    assert all(t is not None for t in named["thresholds"]["0.90"])
    assert silent["support"] == 30
    if leans:
        assert silent["certified_by"] == "attribute" and all(t is not None for t in silent["thresholds"]["0.90"])
    else:  # right 30% of the time: its own rows say the attribute's thresholds do not hold here
        assert silent["certified_by"] is None and silent["thresholds"]["0.90"] == [None, None]
        assert silent["more_needed"] == {"0.90": None}  # 30% cannot reach 0.90 with more of the same


def _products(rows):
    return [Product(str(i), "t", None, dict(zip(("gender", "type", "master", "season"), r, strict=True)))
            for i, r in enumerate(rows)]


def test_hierarchies_and_supported_combinations_are_learned_and_free_pairs_are_not():
    rows = []
    for g, t, m in (("Men", "Shirts", "Apparel"), ("Women", "Shirts", "Apparel"), ("Women", "Heels", "Footwear"),
                    ("Men", "Sneakers", "Footwear"), ("Women", "Sneakers", "Footwear"), ("Men", "Wallets", "Accessories")):
        for season in ("Summer", "Winter", "Fall"):
            rows += [(g, t, m, season)] * 5
    classes = {"gender": ["Men", "Women"], "type": ["Heels", "Shirts", "Sneakers", "Wallets"],
               "master": ["Accessories", "Apparel", "Footwear"], "season": ["Fall", "Summer", "Winter"]}
    c = learn_constraints(_products(rows), classes)
    assert [g.attributes for g in c.groups] == [["gender", "type", "master"]]  # season goes with anything
    allowed = {tuple(x) for x in c.groups[0].allowed}
    assert ("Women", "Heels", "Footwear") in allowed and ("Men", "Heels", "Footwear") not in allowed
    assert ("Men", "Shirts", "Footwear") not in allowed and len(allowed) == 6


def test_a_taxonomy_replaces_what_was_learned_for_its_attributes(tmp_path):
    classes = {"gender": ["Men", "Women"], "type": ["Heels", "Shirts"]}
    f = tmp_path / "taxonomy.csv"
    f.write_text("gender,type\nMen,Shirts\nWomen,Shirts\nWomen,Heels\nWomen,Kaftans\n")
    tax = read_taxonomy(f, classes)
    assert tax.source == "taxonomy: taxonomy.csv" and ["Women", "other"] in tax.allowed  # unknown -> other
    learned = learn_constraints(_products([("Men", "Heels", "x", "y")] * 9), classes)
    assert with_taxonomies(learned, [tax]).groups == [tax]
    f.write_text("gender,colour\nMen,Red\n")
    with pytest.raises(ValueError, match="unknown: \\['colour'\\]"):
        read_taxonomy(f, classes)


def test_certified_classes_too_small_for_their_own_test_share_one_threshold():
    """12 classes, 20 confident right answers each: no class has the rows a certified test of its own
    needs (44 at 0.90), so they share one, certified on all 240 rows: accepted, not left out."""
    from attrx.training.evaluation.metrics import class_thresholds

    rng = np.random.default_rng(0)
    value = np.repeat(np.arange(12), 20)
    conf = rng.uniform(0.95, 1.0, len(value))
    ths = class_thresholds(conf, value, value.copy(), 12, (0.90,), 10, 0.5, delta=0.1)["0.90"]
    assert len(set(ths)) == 1 and ths[0] is not None
