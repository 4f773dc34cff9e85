"""Broken catalog files: every row ends up either read or in the errors with its line and a reason."""

from __future__ import annotations

import pytest

from attrx.service.catalog.reader import read_catalog

HEADER = "id,title,image,colour"


def _rows(n: int = 101) -> list[str]:
    return [f"{i},Roadster Men Tee {i},,red" for i in range(1, n + 1)]


def _write(tmp_path, lines: list[str], ending: str = "\n", raw: bytes | None = None):
    p = tmp_path / "cat.csv"
    p.write_bytes(raw if raw is not None else (ending.join([HEADER, *lines]) + ending).encode())
    return p


def _account(cat, n: int) -> None:
    """Every one of the n data rows is a product or an error, once."""
    ids = [p.id for p in cat.products]
    assert len(ids) == len(set(ids))
    assert len(cat.products) + len(cat.errors) == n, (len(cat.products), [e.to_json() for e in cat.errors])


def test_an_unclosed_quote_in_the_middle_loses_only_its_row(tmp_path):
    rows = _rows()
    rows[50] = '51,"Roadster Men Tee 51,,red'
    cat = read_catalog(_write(tmp_path, rows), ["colour"])
    _account(cat, 101)
    assert len(cat.products) == 100 and [e.line for e in cat.errors] == [52]
    assert "unclosed quote" in cat.errors[0].reason
    assert max(len(p.title) for p in cat.products) < 40  # no title swallowed the rows after it


def test_an_unclosed_quote_on_the_last_line(tmp_path):
    rows = _rows()
    rows[-1] = '101,"Roadster Men Tee 101,,red'
    cat = read_catalog(_write(tmp_path, rows), ["colour"])
    _account(cat, 101)
    assert [e.line for e in cat.errors] == [102] and "end of the file" in cat.errors[0].reason
    assert all(not p.title.startswith("Roadster Men Tee 101") for p in cat.products)


def test_an_unclosed_quote_near_the_end_gives_back_the_lines_it_swallowed(tmp_path):
    rows = _rows()
    rows[97] = '98,"Roadster Men Tee 98,,red'
    cat = read_catalog(_write(tmp_path, rows), ["colour"])
    _account(cat, 101)
    assert [p.id for p in cat.products][-3:] == ["99", "100", "101"]


def test_stray_quotes(tmp_path):
    rows = _rows()
    rows[4] = '5,Men 5" Shorts,,red'          # a quote inside a field is a literal character
    rows[19] = '20,"Men Tee,,red'              # opens a quoted field...
    rows[21] = '22,Women" Dress,,blue'         # ...that this quote closes, two lines later
    cat = read_catalog(_write(tmp_path, rows), ["colour"])
    _account(cat, 101)
    assert [e.line for e in cat.errors] == [21]
    by_id = {p.id: p for p in cat.products}
    assert by_id["5"].title == 'Men 5" Shorts' and by_id["22"].title == 'Women" Dress' and "21" in by_id


def test_a_legal_multi_line_title_is_kept(tmp_path):
    rows = _rows(5)
    rows[2] = '3,"Roadster Men\nStriped ""Tee""",,red'
    cat = read_catalog(_write(tmp_path, rows), ["colour"])
    _account(cat, 5)
    assert not cat.errors and cat.products[2].title == 'Roadster Men\nStriped "Tee"' and cat.products[3].line == 6


def test_nul_bytes(tmp_path):
    rows = _rows()
    rows[9] = "10,Roadster\x00 Tee,,red"
    cat = read_catalog(_write(tmp_path, rows), ["colour"])
    _account(cat, 101)
    assert [(e.line, e.reason) for e in cat.errors] == [(11, "contains NUL bytes")]


def test_mixed_line_endings_and_a_bom(tmp_path):
    rows = _rows(30)
    text = HEADER + "\r\n" + "".join(r + ("\n", "\r\n", "\r")[i % 3] for i, r in enumerate(rows))
    cat = read_catalog(_write(tmp_path, [], raw=b"\xef\xbb\xbf" + text.encode()), ["colour"])
    _account(cat, 30)
    assert not cat.errors and [p.line for p in cat.products][:4] == [2, 3, 4, 5]


@pytest.mark.parametrize("whole_file", [False, True])
def test_wrong_encoding(tmp_path, whole_file):
    rows = _rows(20)
    rows[6] = "7,Café Crème Tee,,red"
    text = "\n".join([HEADER, *rows]) + "\n"
    raw = text.encode("latin-1") if whole_file else text.replace(rows[6], "@@").encode().replace(
        b"@@", rows[6].encode("latin-1"))
    cat = read_catalog(_write(tmp_path, [], raw=raw), ["colour"])
    _account(cat, 20)
    assert [e.line for e in cat.errors] == [8] and "not valid UTF-8" in cat.errors[0].reason


def test_too_many_fields_keeps_the_id(tmp_path):
    rows = _rows(5)
    rows[1] = "2,Too,many,fields,here"
    cat = read_catalog(_write(tmp_path, rows), ["colour"])
    assert [(e.line, e.id) for e in cat.errors] == [(3, "2")] and "5 fields, header has 4" in cat.errors[0].reason


def test_jsonl_with_bad_bytes_and_deep_nesting(tmp_path):
    p = tmp_path / "cat.jsonl"
    p.write_bytes(b'{"id": "1", "title": "Tee"}\n' + '{"id": "2", "title": "Café"}\n'.encode("latin-1")
                  + b"[" * 100_000 + b"\n" + b'{"id": "4", "title": "Cap"}\n')
    cat = read_catalog(p)
    assert [x.id for x in cat.products] == ["1", "4"]
    assert [(e.line, e.reason.split(" (")[0]) for e in cat.errors] == [(2, "is not valid UTF-8"), (3, "invalid JSON")]


def test_scoring_a_broken_catalog_accounts_for_every_row(tmp_path, bundle):
    import json

    from attrx.service.scoring.local import score
    from attrx.service.scoring.score_settings import ScoreSettings

    rows = _rows()
    rows[50] = '51,"Roadster Men Tee 51,,red'
    rows[9] = "10,Roadster\x00 Tee,,red"
    rows[29] = "30,Too,many,fields,here"
    out = tmp_path / "scores.jsonl"
    summary = score(_write(tmp_path, rows), ScoreSettings(bundle=str(bundle), out=str(out), workers=1, progress=False))
    scored = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    errors = [json.loads(x) for x in (tmp_path / "scores.jsonl.errors.jsonl").read_text().splitlines()]
    assert len(scored) + len(errors) == 101 and summary["scored"] == 98
    assert sorted([e["line"] for e in errors]) == [11, 31, 52]
    assert {e["id"] for e in errors} == {None, "30"}
