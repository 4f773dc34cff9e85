"""The review decisions store: SQLite in WAL mode, every confirmed decision on disk before it is confirmed.

Tables:
- `decisions`: append-only, one row per (product, attribute) answer: `accept` (the model's value is
  right), `correct` (another allowed value) or `skip` (no answer), with the reviewer, the time, the
  model's value and confidence, and the product's title and image as reviewed (so corrections export
  as a catalog without the queue). A product is answered once (`kind` 'answer'); a second decision is
  an explicit revision (`kind` 'revision', by a reviewer allowed to revise), which keeps the first.
  The latest row per (product, attribute) is the current one. `verified` is 0 where the reviewer's
  name was only asserted (a shared key), 1 where their own key named them.
- `done`: the products that have been answered (or skipped as a whole, per reviewer).
- `leases`: the product each reviewer holds, and when that lease ends.

`synchronous=FULL` with WAL: a transaction is on disk when COMMIT returns, so a decision the page
was told is saved survives kill -9 and power loss; the page is told only after the commit.
"""

from __future__ import annotations

import csv
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id TEXT NOT NULL, attribute TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('accept', 'correct', 'skip')),
    value TEXT, model_value TEXT, confidence REAL,
    reviewer TEXT NOT NULL, decided_at TEXT NOT NULL,
    title TEXT, image TEXT,
    kind TEXT NOT NULL DEFAULT 'answer' CHECK (kind IN ('answer', 'revision')),
    verified INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS decisions_product ON decisions (product_id, attribute, seq);
CREATE TABLE IF NOT EXISTS done (
    product_id TEXT NOT NULL, reviewer TEXT NOT NULL, outcome TEXT NOT NULL CHECK (outcome IN ('answered', 'skipped')),
    at TEXT NOT NULL, PRIMARY KEY (product_id, reviewer));
CREATE TABLE IF NOT EXISTS leases (
    product_id TEXT PRIMARY KEY, reviewer TEXT NOT NULL, expires REAL NOT NULL);
"""


class LeaseError(Exception):
    """The product is leased to another reviewer."""


class AnsweredError(Exception):
    """The product was answered already (a second answer must be an explicit revision), or, for a
    revision, not yet."""


# stores written before revisions and verified names: their rows are first answers, by named reviewers
MIGRATIONS = ("ALTER TABLE decisions ADD COLUMN kind TEXT NOT NULL DEFAULT 'answer'",
              "ALTER TABLE decisions ADD COLUMN verified INTEGER NOT NULL DEFAULT 1")


@dataclass(frozen=True)
class Answer:
    attribute: str
    action: str  # accept | correct | skip
    value: str | None  # the value the reviewer stands behind (None for skip)
    model_value: str | None = None
    confidence: float | None = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class DecisionStore:
    """One SQLite file; safe to share between the server's threads (one connection, one lock)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise OSError(f"{self.path}: SQLite could not use WAL mode here (got {mode}); put the store on a local disk")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(decisions)")}
        for sql in MIGRATIONS:
            if sql.split()[5] not in columns:
                self._db.execute(sql)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- leases ---------------------------------------------------------------------------------------
    def lease_next(self, reviewer: str, candidates: Iterable[str], ttl_s: float, now: float | None = None) -> str | None:
        """Lease the first of `candidates` (queue order) that nobody answered, that this reviewer did
        not skip, and that no other reviewer holds; a reviewer holds one product at a time, so a lease
        they already hold is returned first. None when nothing is left."""
        now = time.time() if now is None else now
        with self._lock, self._tx():
            held = self._db.execute("SELECT product_id FROM leases WHERE reviewer=? AND expires>?",
                                    (reviewer, now)).fetchone()
            if held:
                self._db.execute("UPDATE leases SET expires=? WHERE product_id=?", (now + ttl_s, held[0]))
                return held[0]
            closed = {r[0] for r in self._db.execute(
                "SELECT product_id FROM done WHERE outcome='answered' OR reviewer=?", (reviewer,))}
            taken = {r[0] for r in self._db.execute("SELECT product_id FROM leases WHERE expires>?", (now,))}
            for pid in candidates:
                if pid not in closed and pid not in taken:
                    self._db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (pid, reviewer, now + ttl_s))
                    return pid
        return None

    def release(self, product_id: str, reviewer: str) -> None:
        with self._lock, self._tx():
            self._db.execute("DELETE FROM leases WHERE product_id=? AND reviewer=?", (product_id, reviewer))

    # -- decisions ------------------------------------------------------------------------------------
    def record(self, product_id: str, reviewer: str, answers: list[Answer], title: str | None = None,
               image: str | None = None, now: float | None = None, verified: bool = True,
               revision: bool = False, at: str | None = None) -> int:
        """Store a product's answers in one transaction, committed (on disk) before returning. Refused
        (LeaseError) when another reviewer holds the product now; an expired or missing lease of one's
        own is fine: nobody else took the product meanwhile. Refused (AnsweredError) when the product
        was answered already, unless this is a revision; a revision of a product nobody answered is
        refused too. The check and the write are one transaction, so of two answers racing, one wins.
        at: when it was decided (ISO 8601 UTC), where another tool recorded it; default now."""
        at = at or _now()
        with self._lock, self._tx():
            other = self._db.execute("SELECT reviewer FROM leases WHERE product_id=? AND expires>? AND reviewer<>?",
                                     (product_id, time.time() if now is None else now, reviewer)).fetchone()
            if other and not revision:
                raise LeaseError(f"product {product_id} is leased to {other[0]}; your lease on it ended")
            first = self._db.execute("SELECT reviewer, at FROM done WHERE product_id=? AND outcome='answered' "
                                     "ORDER BY at LIMIT 1", (product_id,)).fetchone()
            if first and not revision:
                raise AnsweredError(f"product {product_id} was answered by {first[0]} at {first[1]}; a change is a "
                                    "revision (POST .../revision, by a reviewer allowed to revise)")
            if revision and not first:
                raise AnsweredError(f"product {product_id} has no answer to revise: answer it (POST .../decision)")
            self._db.executemany(
                "INSERT INTO decisions (product_id, attribute, action, value, model_value, confidence, reviewer, "
                "decided_at, title, image, kind, verified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(product_id, x.attribute, x.action, x.value, x.model_value, x.confidence, reviewer, at, title, image,
                  "revision" if revision else "answer", int(verified)) for x in answers])
            if not revision:
                self._db.execute("INSERT OR REPLACE INTO done VALUES (?, ?, 'answered', ?)", (product_id, reviewer, at))
                self._db.execute("DELETE FROM leases WHERE product_id=?", (product_id,))
        return len(answers)

    def skip(self, product_id: str, reviewer: str) -> None:
        """This reviewer passes on the product: it goes back to the queue for the others."""
        with self._lock, self._tx():
            self._db.execute("INSERT OR IGNORE INTO done VALUES (?, ?, 'skipped', ?)", (product_id, reviewer, _now()))
            self._db.execute("DELETE FROM leases WHERE product_id=? AND reviewer=?", (product_id, reviewer))

    def current(self) -> list[dict]:
        """The latest answer per (product, attribute), in the order they were given."""
        with self._lock:
            rows = self._db.execute(
                "SELECT product_id, attribute, action, value, model_value, confidence, reviewer, decided_at, title, "
                "image, kind, verified FROM decisions WHERE seq IN (SELECT MAX(seq) FROM decisions GROUP BY product_id, attribute) "
                "ORDER BY seq").fetchall()
        keys = ("id", "attribute", "action", "value", "model_value", "confidence", "reviewer", "decided_at", "title",
                "image", "kind", "verified")
        return [{**dict(zip(keys, r, strict=True)), "verified": bool(r[-1])} for r in rows]

    def history(self, product_id: str) -> list[dict]:
        """Every answer and revision of a product, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT attribute, action, value, reviewer, decided_at, kind, verified FROM "
                                    "decisions WHERE product_id=? ORDER BY seq", (product_id,)).fetchall()
        keys = ("attribute", "action", "value", "reviewer", "decided_at", "kind", "verified")
        return [{**dict(zip(keys, r, strict=True)), "verified": bool(r[-1])} for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            answered = self._db.execute(
                "SELECT COUNT(DISTINCT product_id) FROM done WHERE outcome='answered'").fetchone()[0]
            n = self._db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        return {"products_answered": int(answered), "answers": int(n)}

    def _tx(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): a write transaction, durable when it ends."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, *_):
        self.db.execute("ROLLBACK" if kind else "COMMIT")


def export_catalog(store: DecisionStore, out: str | Path, attributes: list[str] | None = None) -> int:
    """The reviewed values as a catalog file (id, title, image, one column per attribute): accepted and
    corrected answers are labels, skipped ones are empty. Returns the rows written."""
    rows: dict[str, dict] = {}
    seen_attrs: list[str] = []
    for d in store.current():
        r = rows.setdefault(d["id"], {"id": d["id"], "title": d["title"] or "", "image": d["image"] or ""})
        if d["attribute"] not in seen_attrs:
            seen_attrs.append(d["attribute"])
        r[d["attribute"]] = d["value"] if d["action"] != "skip" and d["value"] is not None else ""
    attrs = attributes or seen_attrs
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "title", "image", *attrs], extrasaction="ignore", restval="")
        w.writeheader()
        kept = [r for r in rows.values() if any(r.get(a) for a in attrs)]
        w.writerows(kept)
    return len(kept)
