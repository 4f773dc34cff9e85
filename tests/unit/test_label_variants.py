"""How titles spell the values: rule variants, spellings and predictors learned from titles, the
edited file read back, and the situations they change."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from attrx.service.contract.label_variants import (
    LabelSpellings,
    matcher_words,
    rule_variants,
    singular,
    spelling_key,
)
from attrx.service.contract.situations import SituationReader
from attrx.training.data.variant_learning import (
    learn_predictors,
    learn_spellings,
    learn_variants,
    read_synonyms,
    read_variants,
    write_variants,
)


def test_spelling_keys_join_hyphens_spaces_and_plurals():
    assert spelling_key("Tshirts") == spelling_key("T-shirt") == spelling_key("t shirt") == "tshirt"
    assert spelling_key("Watches") == spelling_key("watch") == "watch"
    assert spelling_key("Handbags") == spelling_key("hand bag") == "handbag"
    assert singular("dresses") == "dress" and singular("accessories") == "accessory" and singular("dress") == "dress"


def test_rule_variants_of_one_and_several_words():
    assert {"watch"} <= set(rule_variants("Watches"))
    assert {"flip flop", "flip-flops", "flipflops", "flip-flop"} <= set(rule_variants("Flip Flops"))
    assert "navy-blue" in rule_variants("Navy Blue") and "navy blue" not in rule_variants("Navy Blue")


def test_spellings_found_in_titles():
    titles = ["Nike Men Blue T-shirt", "Puma Women T-shirt", "Ant Tshirt", "Titan Men Watch", "Fossil Watch"]
    seen = learn_spellings(titles, ["Tshirts", "Watches"])
    assert seen["Tshirts"] == {"t-shirt": 2} and seen["Watches"] == {"watch": 2}  # "tshirt" once: too rare


def test_predictors_skip_brands_and_words_that_name_several_values():
    brands = [f"Brand{i}" for i in range(30)]
    titles = [f"{b} Women Red Tee" for b in brands] + [f"Titan Men Classic {i}" for i in range(30)]
    titles += [f"{b} Men Red Top" for b in brands[:25]] + [f"{b} Men Tee Dress" for b in brands[:1]]
    values = ["Tshirts"] * 30 + ["Watches"] * 30 + ["Tops"] * 25 + ["Dresses"]
    pred = learn_predictors(titles, values)
    assert "tee" in pred["Tshirts"] and pred["Tshirts"]["tee"]["precision"] == round(30 / 31, 4)
    assert "titan" not in pred.get("Watches", {})  # a brand: it opens its titles
    assert "red" not in pred.get("Tshirts", {}) and "red" not in pred.get("Tops", {})  # 30 vs 25: not precise


def test_learned_document_uses_spellings_and_only_proposes_predictors(tmp_path):
    products = [SimpleNamespace(title=f"B{i} Men Blue T-shirt tee", labels={"type": "Tshirts"}) for i in range(25)]
    doc = learn_variants(products, {"type": ["Tshirts", "Watches"]})
    assert "t-shirt" in doc["variants"]["type"]["Tshirts"] and "watch" in doc["variants"]["type"]["Watches"]
    assert "tee" not in doc["variants"]["type"]["Tshirts"] and "tee" in doc["proposed"]["type"]["Tshirts"]
    write_variants(tmp_path, doc)
    assert read_variants(tmp_path) == doc["variants"]
    (tmp_path / "label_variants.json").write_text(json.dumps({"variants": ["t-shirt"]}))
    with pytest.raises(ValueError, match="expected"):
        read_variants(tmp_path)
    assert read_variants(tmp_path / "missing") is None


def test_synonyms_file(tmp_path):
    f = tmp_path / "syn.csv"
    f.write_text("attribute,value,synonym\ncolour,Skin,nude\ncolour,Skin,beige\n")
    assert read_synonyms(f, ["colour"]) == {"colour": {"Skin": ["nude", "beige"]}}
    f.write_text("attribute,value,synonym\nsize,Skin,nude\n")
    with pytest.raises(ValueError, match="no attribute 'size'"):
        read_synonyms(f, ["colour"])
    f.write_text("value,synonym\nSkin,nude\n")
    with pytest.raises(ValueError, match="attribute,value,synonym"):
        read_synonyms(f, ["colour"])


def test_variants_move_titles_from_silent_to_named():
    variants = {"Tshirts": ["T-shirt", "tshirt"], "Watches": ["watch"]}
    old = SituationReader({"type": ["Tshirts", "Watches"]})
    new = SituationReader({"type": matcher_words(["Tshirts", "Watches"], variants)})
    for title in ("Nike Men Blue T-shirt", "Titan Men Analog Watch"):
        assert old.read(title, True) == ["silent+image"] and new.read(title, True) == ["named+image"]
    spell = LabelSpellings(["Tshirts", "Watches"], variants)
    assert spell.named("Nike T-shirt and watch") == ["Tshirts", "Watches"]
    assert spell.names("Nike tshirt", "Tshirts") and not spell.names("Nike tshirt", "Watches")
    assert spell.names("Casual Shirts", "Shirts")  # a label without variants: itself
