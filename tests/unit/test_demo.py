import csv
import re

from attrx.training.data.demo import COLOURS, PATTERN_WORDS, TITLE_PROBABILITIES, write_demo_catalog


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_same_seed_same_catalog_different_seed_differs(tmp_path):
    a = write_demo_catalog(tmp_path / "a", n=30, seed=3, progress=False)
    b = write_demo_catalog(tmp_path / "b", n=30, seed=3, progress=False)
    c = write_demo_catalog(tmp_path / "c", n=30, seed=4, progress=False)
    assert a.read_text() == b.read_text()
    for r in _rows(a):
        if r["image"]:
            assert (a.parent / r["image"]).read_bytes() == (b.parent / r["image"]).read_bytes()
    assert a.read_text() != c.read_text()


def test_attributes_and_title_probabilities(demo_catalog):
    rows = _rows(demo_catalog)
    assert {r["colour"] for r in rows} <= set(COLOURS) and len({r["category"] for r in rows}) >= 6
    assert {r["gender"] for r in rows} == {"men", "women", "unisex"}
    titled = [r for r in rows if r["title"]]
    assert all(r["title"] or r["image"] for r in rows)
    colour_named = sum(bool(re.search(rf"\b{r['colour']}\b", r["title"], re.I)) for r in titled) / len(titled)
    # "Red Tape" / "Blue Harbour" brands add a few spurious colour mentions; the rate stays near 0.5
    assert abs(colour_named - TITLE_PROBABILITIES["colour_word_in_title"]) < 0.12
    words = {w.lower() for ws in PATTERN_WORDS.values() for w in ws}
    pattern_named = sum(any(w in r["title"].lower() for w in words) for r in titled) / len(titled)
    assert abs(pattern_named - TITLE_PROBABILITIES["pattern_word_in_title"]) < 0.1
    gender_named = sum(bool(re.search(r"\b(men|men's|women|women's|unisex)\b", r["title"], re.I)) for r in titled)
    assert gender_named == len(titled)
