"""The review queue's parts that need no server: the orders, the allowed values, the queue reader,
the store's leases, and the trusted-label weights in the training loss (issue 23)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from attrx.service.review.queue_reader import QueueError, Vocabulary, read_queue
from attrx.service.review.store import Answer, DecisionStore, LeaseError
from attrx.service.scoring.queue_writer import lowest_confidence, priorities, priority


def test_priority_counts_expected_wrong_values_and_differs_from_lowest_confidence():
    conf = np.array([[0.5, 0.5, 0.99], [0.2, 0.95, 0.99], [0.9, 0.9, 0.9]])
    acc = np.array([[False, False, True], [False, True, True], [True, True, True]])
    assert priorities(conf, acc) == pytest.approx([1.0, 0.8, 0.0])  # two coin flips beat one likely error
    assert lowest_confidence(conf, acc) == pytest.approx([0.5, 0.8, 0.0])  # ... which this order puts first
    preds = {"a": {"confidence": 0.5, "accepted": False}, "b": {"confidence": 0.7, "accepted": True}}
    assert priority(preds) == pytest.approx(0.5)
    # a situation one more review round could certify comes first: its answers count twice
    preds["a"]["reviews_to_certify"] = 40
    assert priority(preds) == pytest.approx(1.0)
    preds["a"]["reviews_to_certify"] = 0  # certified already (or None: out of reach): no bonus
    assert priority(preds) == pytest.approx(0.5)


def _manifest():
    attrs = [SimpleNamespace(name="type", classes=["shirt", "shoe", "other"], folded_class="other"),
             SimpleNamespace(name="sub", classes=["top", "foot"], folded_class=None),
             SimpleNamespace(name="colour", classes=["red", "blue"], folded_class=None)]
    group = SimpleNamespace(attributes=["type", "sub"], allowed=[["shirt", "top"], ["shoe", "foot"]])
    return SimpleNamespace(attributes=attrs, constraints=SimpleNamespace(groups=[group]))


def test_allowed_values_follow_classes_folded_class_and_constraints():
    v = Vocabulary(_manifest())
    assert v.allowed("type", {}) == ["shirt", "shoe"]  # 'other' is no value a catalog holds
    assert v.allowed("type", {"sub": "foot"}) == ["shoe"]
    assert v.allowed("colour", {"sub": "foot"}) == ["red", "blue"]  # in no group: every class
    assert v.problems({"type": "shoe", "sub": "foot", "colour": "red"}) == []
    assert "no allowed combination of type x sub" in v.problems({"type": "shirt", "sub": "foot"})[0]
    assert "'other' is not one of its 2 allowed values" in v.problems({"type": "other"})[0]
    assert "unknown attribute 'size'" in v.problems({"size": "M"})[0]


def test_queue_reader_orders_by_priority_and_names_bad_lines(tmp_path):
    q = tmp_path / "q.jsonl"
    line = {"format": 1, "id": "a", "title": "T", "image": None, "priority": 0.2, "attributes": {}, "accepted": {}}
    q.write_text("\n".join(json.dumps({**line, **d}) for d in
                           ({"id": "a"}, {"id": "b", "priority": 0.9}, {"id": "a", "priority": 0.5})) + "\n")
    assert [x.id for x in read_queue(q)] == ["b", "a"] and read_queue(q)[1].priority == 0.5  # a later line wins
    q.write_text(json.dumps(line) + "\n{not json\n")
    with pytest.raises(QueueError, match=r"q.jsonl:2: not a review-queue line"):
        read_queue(q)
    q.write_text(json.dumps({**line, "format": 2}) + "\n")
    with pytest.raises(QueueError, match="format 2"):
        read_queue(q)
    with pytest.raises(QueueError, match="does not exist"):
        read_queue(tmp_path / "none.jsonl")


def test_store_leases_one_product_per_reviewer_and_they_lapse(tmp_path):
    s = DecisionStore(tmp_path / "d.sqlite")
    ids = ["p1", "p2", "p3"]
    assert s.lease_next("ann", ids, ttl_s=10, now=100) == "p1"
    assert s.lease_next("ann", ids, ttl_s=10, now=101) == "p1"  # still hers
    assert s.lease_next("ben", ids, ttl_s=10, now=101) == "p2"
    with pytest.raises(LeaseError, match="leased to ann"):
        s.record("p1", "ben", [Answer("type", "accept", "shirt")], now=105)
    assert s.lease_next("ben", ids, ttl_s=10, now=108) == "p2"  # he holds p2 until 111
    s.release("p2", "ben")
    assert s.lease_next("ben", ids, ttl_s=10, now=112) == "p1"  # ann's lease lapsed at 110
    s.record("p1", "ben", [Answer("type", "correct", "shoe", "shirt", 0.4)], "T", None, now=113)
    s.skip("p2", "ben")
    assert s.lease_next("ben", ids, ttl_s=10, now=114) == "p3"  # p1 answered, p2 skipped by him
    assert s.lease_next("ann", ids, ttl_s=10, now=114) == "p2"  # ... but open to her
    assert [(d["id"], d["action"], d["value"], d["reviewer"]) for d in s.current()] == [("p1", "correct", "shoe", "ben")]
    assert s.counts() == {"products_answered": 1, "answers": 1}
    mode = s._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal" and s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_trusted_labels_weigh_more_in_the_loss():
    from attrx.training.loop import _ce

    torch.manual_seed(0)
    logits, labels = [torch.randn(4, 3)], torch.tensor([[0], [1], [2], [-100]])
    plain = _ce(logits, labels)
    same = _ce(logits, labels, item_weights=torch.ones(4))
    assert torch.allclose(plain, same)
    only_first = _ce(logits, labels, item_weights=torch.tensor([1.0, 0.0, 0.0, 5.0]))  # the unlabelled row adds nothing
    assert torch.allclose(only_first, torch.nn.functional.cross_entropy(logits[0][:1], labels[:1, 0]))
    heavier = _ce(logits, labels, item_weights=torch.tensor([3.0, 1.0, 1.0, 1.0]))
    per = torch.nn.functional.cross_entropy(logits[0][:3], labels[:3, 0], reduction="none")
    assert torch.allclose(heavier, (per * torch.tensor([3.0, 1.0, 1.0])).sum() / 5)


def test_a_second_answer_is_refused_and_a_revision_keeps_the_first(tmp_path):
    from attrx.service.review.store import AnsweredError

    store = DecisionStore(tmp_path / "d.sqlite")
    store.record("p1", "alice", [Answer("colour", "accept", "Blue", "Blue", 0.7)])
    with pytest.raises(AnsweredError, match="answered by alice"):
        store.record("p1", "bob", [Answer("colour", "correct", "Navy Blue", "Blue", 0.7)])
    with pytest.raises(AnsweredError, match="no answer to revise"):
        store.record("p2", "bob", [Answer("colour", "skip", None)], revision=True)
    store.record("p1", "bob", [Answer("colour", "correct", "Navy Blue", "Blue", 0.7)], revision=True, verified=False)
    history = store.history("p1")
    assert [(h["kind"], h["reviewer"], h["value"], h["verified"]) for h in history] == [
        ("answer", "alice", "Blue", True), ("revision", "bob", "Navy Blue", False)]
    (current,) = store.current()
    assert current["value"] == "Navy Blue" and current["kind"] == "revision"
    store.close()


def test_a_store_written_before_revisions_opens_with_its_answers_verified(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE decisions (seq INTEGER PRIMARY KEY AUTOINCREMENT, product_id TEXT NOT NULL,
        attribute TEXT NOT NULL, action TEXT NOT NULL, value TEXT, model_value TEXT, confidence REAL,
        reviewer TEXT NOT NULL, decided_at TEXT NOT NULL, title TEXT, image TEXT);
        INSERT INTO decisions (product_id, attribute, action, value, reviewer, decided_at)
        VALUES ('p1', 'colour', 'accept', 'Blue', 'alice', '2026-12-01T00:00:00Z');""")
    db.commit()
    db.close()
    (d,) = DecisionStore(path).current()
    assert d["kind"] == "answer" and d["verified"] is True and d["value"] == "Blue"


def test_reviewer_keys_are_stored_as_salted_hashes_and_plain_keys_are_refused(tmp_path):
    from attrx.service.review.keys import add_reviewer, find, read_reviewers

    f = tmp_path / "reviewers"
    alice, bob = add_reviewer(f, "alice"), add_reviewer(f, "bob", "reviser")
    text = f.read_text()
    assert alice not in text and bob not in text and (f.stat().st_mode & 0o777) == 0o600
    reviewers = read_reviewers(f)
    assert find(reviewers, alice).name == "alice" and find(reviewers, bob).can_revise
    assert find(reviewers, "x" * 43) is None and not find(reviewers, alice).can_revise
    with pytest.raises(ValueError, match="already there"):
        add_reviewer(f, "alice")
    f.write_text(text + "carol:plain-text-key-123\n")
    with pytest.raises(ValueError, match="never stored in plain text"):
        read_reviewers(f)
    # the same key for two reviewers would hash differently (salted): no two lines are alike
    assert len(set(text.splitlines())) == 2
