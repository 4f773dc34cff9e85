"""CSV records that a broken quote cannot swallow.

Python's csv module, given an unclosed quote, reads on to the next quote in the file, which can be
thousands of rows later: those rows vanish into one field. This reader splits the file into
records itself, following the csv module's quoting rules line by line, and parses each record on
its own. A record whose quoted field stays open past `MAX_RECORD_LINES` lines or `MAX_RECORD_CHARS`
characters (or to the end of the file), or a multi-line record that does not have the header's
number of fields or has text after a closing quote, is reported at its first line, and reading resumes at the line after it. So
every line of the file ends up in a record or in an error.

Lines keep their original endings (\\n, \\r\\n or \\r, mixed); a UTF-8 byte-order mark is skipped;
a record with NUL bytes or bytes that are not UTF-8 is an error naming its line.
"""

from __future__ import annotations

import csv
import io
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_RECORD_LINES = 16
MAX_RECORD_CHARS = 64 * 1024
_QUOTE_OR_COMMA = re.compile(r'[",]')
NOT_UTF8 = re.compile("[\udc80-\udcff]")


@dataclass
class Record:
    line: int  # first physical line, 1-based
    fields: list[str] | None
    error: str | None = None
    lines: int = 1


def _scan(line: str, in_quotes: bool) -> tuple[bool, bool]:
    """(whether a quoted field is still open at the end of `line`, whether a quoted field closed
    untidily: followed by anything but a comma or the line's end). csv's default dialect: a quote
    opens a field only at its start; "" inside quotes is a literal quote."""
    if '"' not in line:
        return in_quotes, False
    at_start, untidy = not in_quotes, False
    i, n = 0, len(line)
    while i < n:
        if in_quotes:
            j = line.find('"', i)
            if j < 0:
                return True, untidy
            if j + 1 < n and line[j + 1] == '"':
                i = j + 2
                continue
            untidy = untidy or (j + 1 < n and line[j + 1] not in ",\r\n")
            in_quotes, at_start, i = False, False, j + 1
            continue
        m = _QUOTE_OR_COMMA.search(line, i)
        if m is None:
            return False, untidy
        j = m.start()
        if line[j] == ",":
            at_start = True
        elif at_start and j == i:
            in_quotes = True
        else:
            at_start = False
        i = j + 1
    return in_quotes, untidy


def _parse(text: str) -> list[str] | None:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    return rows[0] if rows else None


def _check(rec_text: str) -> str | None:
    if "\x00" in rec_text:
        return "contains NUL bytes"
    if NOT_UTF8.search(rec_text):
        return "is not valid UTF-8 (re-encode the file as UTF-8)"
    return None


def records(path: Path) -> Iterator[Record]:
    """The header is the first record; rows follow. Blank lines are skipped."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        yield from _records(enumerate(f, start=1))


def _records(lines: Iterator[tuple[int, str]]) -> Iterator[Record]:
    pending: deque[tuple[int, str]] = deque()  # lines to read again after a resynchronisation
    width: int | None = None  # the header's number of fields
    buf: list[tuple[int, str]] = []
    in_quotes, untidy, chars = False, False, 0
    while True:
        item = pending.popleft() if pending else next(lines, None)
        if item is None:
            if not buf:
                break
            yield Record(buf[0][0], None, "unclosed quote at the end of the file")
            pending.extend(buf[1:])  # the lines it swallowed are rows of their own
            buf, in_quotes, untidy, chars = [], False, False, 0
            continue
        buf.append(item)
        chars += len(item[1])
        in_quotes, dirty = _scan(item[1], in_quotes)
        untidy = untidy or dirty
        if in_quotes and len(buf) <= MAX_RECORD_LINES and chars <= MAX_RECORD_CHARS:
            continue
        start = buf[0][0]
        if in_quotes:
            yield Record(start, None, f"unclosed quote: a quoted field opened here runs past "
                                      f"{len(buf)} lines / {chars:,} characters; the rest of the file is read "
                                      f"from line {start + 1}")
            pending.extendleft(reversed(buf[1:]))
        else:
            rec = _record(buf, width, untidy)
            if rec is not None:
                if rec.error and rec.lines > 1:  # a stray quote swallowed lines: read them again
                    pending.extendleft(reversed(buf[1:]))
                elif width is None and rec.fields is not None:
                    width = len(rec.fields)
                yield rec
        buf, in_quotes, untidy, chars = [], False, False, 0


def _record(buf: list[tuple[int, str]], width: int | None, untidy: bool) -> Record | None:
    start, text = buf[0][0], "".join(t for _, t in buf)
    if not text.strip("\r\n"):
        return None
    bad = _check(text)
    if bad:
        return Record(start, None, bad, len(buf))
    fields = _parse(text)
    if fields is None:
        return None
    if width is not None and len(buf) > 1 and (len(fields) != width or untidy):
        why = "text follows its closing quote" if untidy else f"{len(fields)} fields, the header has {width}"
        return Record(start, fields, f"malformed quoting: a quoted field opened here spans lines "
                                     f"{start}-{buf[-1][0]} ({why}); the lines after it are read again",
                      len(buf))
    return Record(start, fields, None, len(buf))
