"""Situations, thresholds per situation, conflicts, the folded class and record constraints (numpy only)."""

from types import SimpleNamespace

import numpy as np
import pytest

from attrx.service.contract.bundle import AttributeSpec, SituationSpec
from attrx.service.contract.constraints import ConstraintGroup, Constraints, RecordDecoder
from attrx.service.contract.decisions import REVIEW_REASONS, AttributeRules, decide, rules_from_manifest
from attrx.service.contract.situations import SITUATIONS, SituationReader

NAMED, SILENT, NO_TITLE, NAMED_NO_IMAGE = (SITUATIONS.index(s) for s in
                                           ("named+image", "silent+image", "no_title+image", "named+no_image"))


def test_situations_are_read_per_attribute_with_the_contract_matcher():
    read = SituationReader({"colour": ["Navy Blue", "Blue", "Red"], "gender": ["Men", "Women"]})
    assert read("Roadster Men NAVY blue Tee", b"jpeg") == ["named+image", "named+image"]
    assert read("Roadster Women Tee", None) == ["silent+no_image", "named+no_image"]
    assert read("Bluetooth Speaker", b"jpeg") == ["silent+image", "silent+image"]  # whole words only
    assert read("   ", b"jpeg") == read(None, b"jpeg") == ["no_title+image"] * 2
    assert read("Red Tee", b"") == ["named+no_image", "silent+no_image"]  # an empty upload is no image


def _rules(thresholds_by_situation: dict[int, float], other: int = -1, conflict=None) -> AttributeRules:
    table = np.full((len(SITUATIONS), 3), np.nan)
    for k, t in thresholds_by_situation.items():
        table[k] = t
    return AttributeRules("colour", ["red", "blue", "other"], {"0.90": table}, other, conflict)


def test_each_situation_has_its_own_threshold_and_no_support_means_never_accepted():
    rules = [_rules({NAMED: 0.5, SILENT: 0.9})]
    probs = [np.array([[0.7, 0.2, 0.1]] * 3)]
    d = decide(rules, None, probs, np.array([[NAMED], [SILENT], [NO_TITLE]]), "0.90")
    assert d.threshold[0][:2].tolist() == [0.5, 0.9] and np.isnan(d.threshold[0][2])
    assert d.accepted[0].tolist() == [True, False, False]
    assert [REVIEW_REASONS[r] if r >= 0 else None for r in d.reason[0]] == [None, "below_threshold", "no_support"]


def test_the_folded_class_is_never_accepted():
    d = decide([_rules({NAMED: 0.1}, other=2)], None, [np.array([[0.0, 0.01, 0.99]])], np.array([[NAMED]]), "0.90")
    assert not d.accepted[0][0] and REVIEW_REASONS[d.reason[0][0]] == "other"


def test_a_title_value_the_image_rules_out_is_a_conflict_only_when_both_are_present():
    rules = [_rules({NAMED: 0.1, NAMED_NO_IMAGE: 0.1}, conflict=(0.5, 0.01))]
    probs = [np.array([[0.95, 0.04, 0.01]] * 3)]
    text = [np.array([[0.99, 0.005, 0.005]] * 3)]
    image = [np.array([[0.005, 0.99, 0.005], [0.2, 0.7, 0.1], [0.005, 0.99, 0.005]])]
    sits = np.array([[NAMED], [NAMED], [NAMED_NO_IMAGE]])
    d = decide(rules, None, probs, sits, "0.90", text, image)
    assert d.conflict[0].tolist() == [True, False, False]
    assert d.accepted[0].tolist() == [False, True, True]


def test_constrained_decoding_picks_the_most_probable_allowed_record_and_never_forces_one():
    classes = {"type": ["shirt", "shoe"], "master": ["apparel", "footwear"]}
    allowed = Constraints(groups=[ConstraintGroup(attributes=["type", "master"],
                                                  allowed=[["shirt", "apparel"], ["shoe", "footwear"]])])
    dec = RecordDecoder(classes, allowed)
    out = dec.decode([np.array([[0.6, 0.4]]), np.array([[0.2, 0.8]])])
    assert out.chosen.tolist() == [[1, 1]] and out.changed.tolist() == [[True, False]]
    assert not out.no_fit.any()
    # the only allowed record is 1000x less probable than the model's own: flagged, not forced
    only = Constraints(groups=[ConstraintGroup(attributes=["type", "master"], allowed=[["shoe", "apparel"]])])
    out = RecordDecoder(classes, only).decode([np.array([[0.999, 0.001]]), np.array([[0.999, 0.001]])])
    assert out.chosen.tolist() == [[0, 0]] and out.no_fit.all() and not out.changed.any()


def test_a_bundle_before_situations_keeps_its_per_class_thresholds_in_every_situation():
    spec = AttributeSpec(name="colour", classes=["red", "blue"], thresholds={"0.90": [0.6, None]})
    manifest = SimpleNamespace(attributes=[spec], precision_targets=[0.9], model=SimpleNamespace(unimodal=False),
                               constraints=None)
    rules, decoder = rules_from_manifest(manifest)
    table = rules[0].thresholds["0.90"]
    assert decoder is None and np.all(table[:, 0] == 0.6) and np.all(np.isnan(table[:, 1]))


def test_a_situation_calibrated_bundle_names_no_unknown_situation():
    sit = SituationSpec(support=100, thresholds={"0.90": [0.5, 0.5]})
    with pytest.raises(ValueError, match="unknown situations"):
        AttributeSpec(name="c", classes=["a", "b"], thresholds={"0.90": [0.5, 0.5]}, situations={"named": sit})
    spec = AttributeSpec(name="c", classes=["a", "b"], thresholds={"0.90": [0.5, 0.5]},
                         situations={"silent+image": sit})
    manifest = SimpleNamespace(attributes=[spec], precision_targets=[0.9], model=SimpleNamespace(unimodal=False),
                               constraints=None)
    table = rules_from_manifest(manifest)[0][0].thresholds["0.90"]
    assert table[SILENT].tolist() == [0.5, 0.5] and np.isnan(table[NAMED]).all()  # named lacked support


def test_one_product_at_a_time_answers_as_the_batch_does():
    """decide_one (serving) and decide (evaluation, calibration) are one rule in two speeds."""
    from attrx.service.contract.decisions import decide_one

    rng = np.random.default_rng(0)
    classes = {"type": ["shirt", "shoe", "bag", "other"], "master": ["apparel", "footwear", "accessories"],
               "colour": ["red", "blue", "other"]}
    allowed = Constraints(groups=[ConstraintGroup(attributes=["type", "master"], allowed=[
        ["shirt", "apparel"], ["shoe", "footwear"], ["bag", "accessories"], ["other", "apparel"]])], fit_ratio=0.05)
    decoder = RecordDecoder(classes, allowed)
    from attrx.service.contract.decisions import Families

    families = {"type": Families(["wear"], np.array([0, 0, -1, -1]), {"0.90": rng.uniform(0.3, 0.9, (len(SITUATIONS), 1))}),
                "colour": Families(["any"], np.array([0, 0, -1]), {"0.90": rng.uniform(0.3, 0.9, (len(SITUATIONS), 1))})}
    rules = []
    for a, cl in classes.items():
        table = rng.uniform(0.2, 0.9, (len(SITUATIONS), len(cl)))
        table[rng.random(table.shape) < 0.2] = np.nan
        rules.append(AttributeRules(a, cl, {"0.90": table}, len(cl) - 1 if cl[-1] == "other" else -1, (0.5, 0.2),
                                    families.get(a)))
    n = 400

    def draw(c):
        return rng.dirichlet(np.full(c, 0.3), n).astype(np.float32)

    probs, text, image = ([draw(len(c)) for c in classes.values()] for _ in range(3))
    sits = rng.integers(0, len(SITUATIONS), (n, len(classes)))
    batch = decide(rules, decoder, probs, sits, "0.90", text, image)
    for i in range(n):
        one = decide_one(rules, decoder, [p[i] for p in probs], sits[i].tolist(), "0.90", [t[i] for t in text],
                         [m[i] for m in image])
        for j, (c, conf, thr, why, flag, changed, fam, fconf, fthr, fok) in enumerate(one):
            assert (c, why, flag, changed) == (batch.value[j][i], batch.reason[j][i], batch.conflict[j][i],
                                               batch.constrained[j][i])
            assert conf == pytest.approx(batch.confidence[j][i]) and (thr is None) == np.isnan(batch.threshold[j][i])
            assert (fam, fok) == (batch.family[j][i], batch.family_accepted[j][i])
            assert (fconf is None) == np.isnan(batch.family_confidence[j][i]) and (fthr is None) == np.isnan(batch.family_threshold[j][i])
            assert fconf is None or fconf == pytest.approx(batch.family_confidence[j][i])
    assert 0 < sum(int(f.sum()) for f in batch.family_accepted) < n  # the family level is exercised
    assert not any((f & a).any() for f, a in zip(batch.family_accepted, batch.accepted, strict=True))
    reasons = {int(r) for rs in batch.reason for r in rs}
    assert reasons == {-1, 0, 1, 2, 3, 4}  # every outcome was exercised


def test_the_served_reader_reads_every_title_as_the_matcher_does():
    from attrx.service.contract.preprocess import normalise_title
    from attrx.service.contract.situations import label_pattern, situation_of

    words = {"colour": ["Navy Blue", "Blue", "Off White", "Red", "Multi"], "type": ["T-Shirt", "Tshirts", "Flip Flops"],
             "odd": ["(RED)", "Rosé", "x_y"]}
    read = SituationReader(words)
    titles = ["Roadster Men NAVY blue T-shirt", "off-white tee", "Off White Tee", "Flip  Flops", "blue-ish",
              "Bluetooth", "RED", "Roadster (red) cap", "rosé wine", "ROSÉ", "t shirt", "x_y z", "x y", "multicolour",
              "Puma", "tshirts!", "Men's Blue"]
    pats = {a: label_pattern(ws) for a, ws in words.items()}
    for t in titles:
        for img in (b"x", None):
            want = [situation_of(normalise_title(t), img is not None, pats[a]) for a in words]
            assert read(t, img) == want, t


def test_a_conflict_within_a_family_may_be_accepted_at_the_family_never_across():
    """Title "olive", image green: the values conflict, the family Green is agreed on and accepted.
    Title "red", image green: a conflict across families is accepted at no level."""
    from attrx.service.contract.decisions import Families

    classes = ["olive", "green", "red"]
    fam = Families(["Green"], np.array([0, 0, -1]), {"0.90": np.full((len(SITUATIONS), 1), 0.8)})
    rules = [AttributeRules("colour", classes, {"0.90": np.full((len(SITUATIONS), 3), 0.95)}, -1, (0.5, 0.1), fam)]
    both = SITUATIONS.index("named+image")
    probs = np.array([[0.5, 0.45, 0.05], [0.05, 0.5, 0.45]])
    text = np.array([[0.9, 0.05, 0.05], [0.05, 0.05, 0.9]])
    image = np.array([[0.05, 0.9, 0.05], [0.05, 0.9, 0.05]])
    d = decide(rules, None, [probs], np.full((2, 1), both), "0.90", [text], [image])
    assert d.conflict[0].tolist() == [True, True] and not d.accepted[0].any()
    assert d.family[0].tolist() == [0, 0] and d.family_accepted[0].tolist() == [True, False]
