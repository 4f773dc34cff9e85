import json

import pytest

from attrx.service.catalog.reader import CatalogError, read_catalog

ROWS = [
    {"id": "a", "title": "Blue Shirt", "image": "", "colour": "blue", "pattern": ""},
    {"id": "b", "title": "", "image": "img/b.jpg", "colour": "red", "pattern": "solid"},
    {"id": "c", "title": "Green Tee", "image": "/abs/c.jpg", "colour": "", "pattern": "striped"},
]


def _write(tmp_path, fmt, rows):
    if fmt == "csv":
        import csv

        p = tmp_path / "cat.csv"
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "jsonl":
        p = tmp_path / "cat.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = tmp_path / "cat.parquet"
        pq.write_table(pa.Table.from_pylist(rows), p)
    return p


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_formats_read_the_same(tmp_path, fmt):
    cat = read_catalog(_write(tmp_path, fmt, ROWS), ["colour", "pattern"])
    assert not cat.errors
    a, b, c = cat.products
    assert (a.id, a.title, a.image) == ("a", "Blue Shirt", None)
    assert b.title is None and b.image == tmp_path / "img" / "b.jpg"  # relative to the catalog file
    assert str(c.image) == "/abs/c.jpg"
    assert a.labels == {"colour": "blue", "pattern": None} and c.labels["colour"] is None


def test_malformed_rows_are_reported_with_line_and_reason(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text(
        "id,title,image,colour\n"
        "1,Red Tee,,red\n"
        ",No Id Tee,,red\n"            # line 3: no id
        "3,,,blue\n"                    # line 4: neither title nor image
        "4,Too,many,fields,here\n"      # line 5
        "1,Duplicate,,red\n"            # line 6
        '5,"Multi\nline title",,green\n'  # lines 7-8: valid
        "6,After,,black\n"              # line 9
    )
    cat = read_catalog(p, ["colour"])
    assert [x.id for x in cat.products] == ["1", "5", "6"]
    assert cat.products[2].line == 9
    got = {(e.line, e.reason.split(" ")[0]) for e in cat.errors}
    assert got == {(3, "no"), (4, "neither"), (5, "5"), (6, "duplicate")}


def test_jsonl_bad_lines(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "1", "title": "x", "colour": "red"}\n{oops\n[1, 2]\n\n{"id": "2", "image": "i.jpg", "colour": "red"}\n')
    cat = read_catalog(p, ["colour"])
    assert [x.id for x in cat.products] == ["1", "2"]
    assert [(e.line, e.reason[:12]) for e in cat.errors] == [(2, "invalid JSON"), (3, "expected a J")]


def test_unknown_attribute_and_format_are_clear_errors(tmp_path):
    p = _write(tmp_path, "csv", ROWS)
    with pytest.raises(CatalogError, match="missing column.*sleeve.*the catalog has id, title"):
        read_catalog(p, ["colour", "sleeve"])
    xlsx = tmp_path / "cat.xlsx"
    xlsx.write_text("")
    with pytest.raises(CatalogError, match="unknown catalog format"):
        read_catalog(xlsx, ["colour"])
    with pytest.raises(CatalogError, match="does not exist"):
        read_catalog(tmp_path / "none.csv", ["colour"])


def test_unreadable_image_row_is_skipped_and_reported(tmp_path, checkpoint):
    from attrx.training.data.encode import encode_catalog
    from attrx.training.models.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    p = tmp_path / "c.csv"
    p.write_text("id,title,image,colour\n1,Blue Tee,,blue\n2,Red Tee,broken.jpg,red\n3,Tee,missing.jpg,red\n")
    cat = read_catalog(p, ["colour"])
    data, errors = encode_catalog(cat, ck.tokenizer, ck.preprocess, {"colour": ["blue", "red"]}, progress=False)
    assert [x.id for x in data.products] == ["1"]
    assert [(e.line, e.id) for e in errors] == [(3, "2"), (4, "3")]
    assert "broken.jpg" in errors[0].reason and "cannot be read" in errors[1].reason
    # the disk store (and its cache, cold then warm) reports the same rows
    from attrx.training.data.encode import encode_catalog_on_disk

    for expect_warm in (False, True):
        disk, errs, warm = encode_catalog_on_disk(cat, ck.tokenizer, ck.preprocess, {"colour": ["blue", "red"]},
                                                  catalog_file=p, scratch=tmp_path, cache_dir=tmp_path / "cache",
                                                  progress=False)
        assert warm is expect_warm and [x.id for x in disk.products] == ["1"]
        assert [(e.line, e.id, e.reason) for e in errs] == [(e.line, e.id, e.reason) for e in errors]
