"""Value families: a hierarchy over an attribute's values (value -> family), e.g. colour -> colour family.

A model that is sure a product is blue but unsure which blue accepts nothing at the value level;
shop filters and feeds mostly want the family. With a hierarchy, an answer is accepted at the finest
level that meets the target: the value where its own threshold is met, else its family where the
family's summed probability meets the family's threshold (calibrated per situation as values are),
else nothing.

A catalog declares its hierarchy as a CSV (attribute,value,family); attrx ships DEFAULT_COLOUR_FAMILIES
for common colour names, applied to an attribute most of whose values it names (a catalog's file
replaces it for the attributes it lists). Values a table does not name form families of their own;
a family of one value adds nothing and is left out. numpy-free and torch-free.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path

# Written down before any result was looked at (docs/trust.md lists it): family -> its colour names.
DEFAULT_COLOUR_FAMILIES: dict[str, list[str]] = {
    "Black": ["Black", "Jet Black"],
    "White": ["White", "Off White", "Ivory"],
    "Grey": ["Grey", "Grey Melange", "Charcoal", "Slate"],
    "Silver": ["Silver", "Steel", "Metallic", "Gunmetal"],
    "Gold": ["Gold", "Bronze", "Copper", "Rose Gold"],
    "Blue": ["Blue", "Navy Blue", "Navy", "Turquoise Blue", "Turquoise", "Teal", "Sky Blue", "Royal Blue", "Aqua"],
    "Green": ["Green", "Olive", "Sea Green", "Lime Green", "Fluorescent Green", "Mint", "Dark Green"],
    "Red": ["Red", "Maroon", "Burgundy", "Wine", "Crimson"],
    "Pink": ["Pink", "Magenta", "Rose", "Fuchsia", "Hot Pink"],
    "Orange": ["Orange", "Peach", "Rust", "Coral"],
    "Yellow": ["Yellow", "Mustard", "Lemon"],
    "Purple": ["Purple", "Lavender", "Mauve", "Violet", "Lilac"],
    "Brown": ["Brown", "Coffee Brown", "Mushroom Brown", "Tan", "Taupe", "Chocolate"],
    "Beige": ["Beige", "Skin", "Cream", "Nude", "Khaki", "Camel"],
    "Multi": ["Multi", "Multicolour", "Multicolor"],
}
COVERS = 0.5  # the default table applies to an attribute when it names at least this share of its values


def default_families(classes: list[str]) -> dict[str, str] | None:
    """value -> family from DEFAULT_COLOUR_FAMILIES, when it names most of these values; else None."""
    member = {v.lower(): fam for fam, vs in DEFAULT_COLOUR_FAMILIES.items() for v in vs}
    named = {c: member[c.lower()] for c in classes if c.lower() in member}
    return named if named and len(named) >= COVERS * len(classes) else None


def read_value_pairs(path: str | Path, attrs: Iterable[str], column: str, option: str) -> list[tuple[str, str, str]]:
    """A CSV of attribute,value,<column> rows (a hierarchy, synonyms): checked, as (attribute, value,
    that column's) triples. `option` names the flag it came with, for the errors."""
    path, attrs = Path(path), list(attrs)
    if not path.is_file():
        raise FileNotFoundError(f"{option} {path}: no such file")
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f)
        if not {"attribute", "value", column} <= set(rows.fieldnames or []):
            raise ValueError(f"{path}: {option} needs the columns attribute,value,{column}")
        for i, r in enumerate(rows, start=2):
            if r["attribute"] not in attrs:
                raise ValueError(f"{path}:{i}: no attribute {r['attribute']!r} ({', '.join(attrs)})")
            if not (r["value"] or "").strip() or not (r[column] or "").strip():
                raise ValueError(f"{path}:{i}: an empty value or {column}")
            out.append((r["attribute"], r["value"].strip(), r[column].strip()))
    return out


def read_families(path: str | Path, attrs: Iterable[str]) -> dict[str, dict[str, str]]:
    """A catalog's hierarchy file (CSV: attribute,value,family) -> {attr: {value: family}}."""
    out: dict[str, dict[str, str]] = {}
    for a, value, family in read_value_pairs(path, attrs, "family", "--families"):
        out.setdefault(a, {})[value] = family
    return out


def family_index(classes: list[str], parent: Mapping[str, str], folded: str | None = None
                 ) -> tuple[list[str], list[int]] | None:
    """(family names, per class its family's index or -1) for the families of two or more classes;
    None when there is none. The folded class belongs to no family."""
    lower = {k.lower(): v for k, v in parent.items()}
    members: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        fam = lower.get(c.lower())
        if fam is not None and c != folded:
            members.setdefault(fam, []).append(i)
    names = sorted(f for f, ms in members.items() if len(ms) > 1)
    if not names:
        return None
    of_class = [-1] * len(classes)
    for k, f in enumerate(names):
        for i in members[f]:
            of_class[i] = k
    return names, of_class


def attribute_families(classes: dict[str, list[str]], declared: Mapping[str, Mapping[str, str]] | None,
                       folded: Mapping[str, str | None] | None = None, use_default: bool = True
                       ) -> dict[str, tuple[list[str], list[int]]]:
    """Per attribute with families: (names, of_class). A declared hierarchy replaces the default."""
    out = {}
    for a, cl in classes.items():
        parent = (declared or {}).get(a) or (default_families(cl) if use_default else None)
        fam = family_index(cl, parent, (folded or {}).get(a)) if parent else None
        if fam is not None:
            out[a] = fam
    return out
