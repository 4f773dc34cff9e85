"""Value families: the default colour table applies where it names most values, families of one
value and the folded class are left out, and a catalog's file is checked."""

from __future__ import annotations

import pytest

from attrx.service.contract.families import attribute_families, default_families, family_index, read_families


def test_the_default_colour_table_applies_where_it_names_most_values():
    colours = ["Black", "Blue", "Navy Blue", "Olive", "Green", "Beige", "Skin", "other"]
    fam = default_families(colours)
    assert fam["Navy Blue"] == fam["Blue"] == "Blue" and fam["Olive"] == "Green" and fam["Skin"] == "Beige"
    assert default_families(["Shirts", "Tshirts", "Watches", "Blue"]) is None  # one of four: not colours
    names, of_class = family_index(colours, fam, folded="other")
    assert names == ["Beige", "Blue", "Green"]  # Black alone is no family; other belongs to none
    assert of_class == [-1, 1, 1, 2, 2, 0, 0, -1]


def test_a_declared_hierarchy_replaces_the_default_for_its_attributes(tmp_path):
    f = tmp_path / "families.csv"
    f.write_text("attribute,value,family\ncolour,Black,Dark\ncolour,Navy Blue,Dark\n")
    declared = read_families(f, ["colour", "type"])
    classes = {"colour": ["Black", "Blue", "Navy Blue"], "type": ["Shirts", "Tops"]}
    fams = attribute_families(classes, declared)
    assert fams == {"colour": (["Dark"], [0, -1, 0])}
    assert attribute_families({"colour": ["Blue", "Navy Blue"]}, None, use_default=False) == {}


@pytest.mark.parametrize(("text", "message"), [
    ("attribute,value\ncolour,Black\n", "attribute,value,family"),
    ("attribute,value,family\nsize,S,Small\n", "no attribute 'size'"),
    ("attribute,value,family\ncolour,,Dark\n", "an empty value or family"),
])
def test_a_bad_families_file_is_named(tmp_path, text, message):
    f = tmp_path / "families.csv"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_families(f, ["colour"])
    with pytest.raises(FileNotFoundError, match="--families"):
        read_families(tmp_path / "none.csv", ["colour"])
