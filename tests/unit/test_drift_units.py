"""Drift statistics and the shared window: distances, the ring buffer, the shared-memory block,
thresholds and profiles (no bundle, no server)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from attrx.service.contract.drift_stats import (
    THRESHOLDS,
    ReferenceError,
    exceeded,
    js_distance,
    load_thresholds,
    profile,
    statistics_of,
    thresholds_for,
)
from attrx.service.telemetry.drift_window import DriftBlock, Window


def test_js_distance_is_zero_for_equal_one_for_disjoint_and_symmetric():
    assert js_distance([3, 1, 0], [6, 2, 0]) == 0.0
    assert js_distance([5, 0], [0, 7]) == 1.0
    p, q = np.array([10, 3, 1, 0]), np.array([2, 2, 5, 1])
    assert js_distance(p, q) == js_distance(q, p)
    assert 0 < js_distance(p, q) < 1


def test_the_window_counts_exactly_the_last_products_whatever_the_batch_sizes():
    rng = np.random.default_rng(0)
    total, size = 40, 50
    block = DriftBlock(total)
    try:
        win = Window(size, 3, block)
        rows = []
        for n in [1, 7, 32, 3, 60, 1, 1, 49, 50, 2]:  # batches smaller, equal and larger than the window
            bins = rng.integers(0, total, size=(n, 3))
            win.add(bins)
            rows += list(bins)
            counts, items = block.read_window()
            last = np.array(rows[-size:])
            assert items == len(last)
            assert (counts == np.bincount(last.ravel(), minlength=total)).all()
    finally:
        block.close()


def _reader(name: str, total: int, stop, bad, reads) -> None:
    other = DriftBlock(total, name=name)  # as a front-end attaches it
    while not stop.is_set():
        counts, items = other.read_window()
        reads.value += 1
        if counts.sum() != items * 2:
            bad.value += 1
    other.close()


def test_a_reader_in_another_process_sees_whole_batches_only():
    """The sequence number: a front-end reading while the engine writes never sees a batch half
    added (the counts always sum to products x statistics). Many bins make each write long enough
    for a reader without the sequence number to land inside it."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    total = 400_000
    block = DriftBlock(total)
    stop, bad, reads = ctx.Event(), ctx.Value("i", 0), ctx.Value("i", 0)
    p = ctx.Process(target=_reader, args=(block.name, total, stop, bad, reads))
    try:
        win = Window(100, 2, block)
        p.start()
        rng = np.random.default_rng(1)
        end = time.monotonic() + 60  # the reader has started reading (a bound, not a wait that could hang)
        while reads.value < 5 and time.monotonic() < end:
            win.add(rng.integers(0, total, size=(10, 2)))
        for _ in range(400):
            win.add(rng.integers(0, total, size=(int(rng.integers(1, 40)), 2)))
        stop.set()
        p.join(30)
        assert reads.value > 5 and bad.value == 0, (reads.value, bad.value)
    finally:
        stop.set()
        if p.is_alive():
            p.kill()
        block.close()


def test_the_reference_in_the_block_is_shared_and_replaced_whole():
    block = DriftBlock(4)
    other = DriftBlock(4, name=block.name)
    try:
        assert other.read_reference() == (None, 0, "none")
        block.set_reference(np.array([1, 2, 3, 4]), 10, "bundle")
        counts, items, source = other.read_reference()
        assert counts.tolist() == [1, 2, 3, 4] and items == 10 and source == "bundle"
        block.set_reference(np.array([0, 0, 5, 5]), 10, "traffic")  # a re-baseline, by the one writer
        assert other.read_reference()[0].tolist() == [0, 0, 5, 5] and other.read_reference()[2] == "traffic"
    finally:
        other.close()
        block.close()


def test_thresholds_resolve_attribute_statistic_then_kind_then_default(tmp_path):
    stats = statistics_of([("colour", 3), ("gender", 2)])
    th = thresholds_for(stats, {"value": 0.4, "colour.value": 0.2})
    assert th["colour.value"] == 0.2 and th["gender.value"] == 0.4
    assert th["gender.situation"] == THRESHOLDS["situation"] and th["image_size"] == THRESHOLDS["image_size"]
    cmp = {"attributes": {"colour": {"distance": {"value": 0.3, "situation": None}},
                          "gender": {"distance": {"value": 0.3}}}, "inputs": {"image_size": 0.99}}
    hits = exceeded(cmp, th)
    assert [h.split()[0] for h in hits] == ["colour.value", "image_size"]
    good = tmp_path / "t.json"
    good.write_text(json.dumps({"value": 0.5, "colour.situation": 0.1}))
    assert load_thresholds(good) == {"value": 0.5, "colour.situation": 0.1}
    for body, why in [({"value": 2}, "numbers in"), ({"colour.hue": 0.1}, "unknown statistics"), ([1], "numbers")]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(body))
        with pytest.raises(ReferenceError, match=why):
            load_thresholds(bad)


def test_a_profile_marks_what_is_missing_and_a_blank_image_has_no_contrast():
    blank = np.full((3, 32, 32), 1.5, dtype=np.float32)
    noisy = np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)
    row = profile([0, 2], "Roadster Men Blue Tee", (60, 80), blank)[0]
    assert row.tolist()[:4] == [0, 2, len("Roadster Men Blue Tee"), 60] and row[4] == 0.0
    assert profile([2, 2], None, (60, 80), noisy)[0][2] == -1 and profile([2], None, (9, 9), noisy)[0][-1] > 0.5
    assert profile([3], "Tee", None, None)[0].tolist()[-2:] == [-1, -1]


def test_statistics_lay_out_every_bin_once():
    stats = statistics_of([("colour", 12), ("gender", 3)])
    ends = [s.offset + s.bins for s in stats]
    assert [s.offset for s in stats] == [0, *ends[:-1]]
    assert [s.name for s in stats if s.attribute == "colour"] == ["value", "confidence", "image_weight",
                                                                  "situation", "accepted"]
    assert [s.name for s in stats if s.attribute is None] == ["title_length", "image_size", "image_contrast"]


def test_the_default_window_is_the_one_the_thresholds_were_chosen_for():
    from attrx.service.contract.drift_stats import DEFAULT_WINDOW
    from attrx.service.settings import ServeSettings

    assert ServeSettings.model_fields["drift_window"].default == DEFAULT_WINDOW == 1000


def test_the_drift_block_has_one_writer_and_readers_attach_read_only():
    """Front-ends attach to the inference process's block read-only: a re-baseline written by two of
    them at once raced on the sequence number, leaving it odd and every reader waiting."""
    import numpy as np

    from attrx.service.telemetry.drift_window import DriftBlock

    owner = DriftBlock(6)
    try:
        reader = DriftBlock(6, name=owner.name)
        owner.set_reference(np.arange(6, dtype=np.int64), 6, "traffic")
        counts, items, source = reader.read_reference()
        assert list(counts) == list(range(6)) and items == 6 and source == "traffic"
        with pytest.raises(ValueError, match="read-only"):
            reader.set_reference(np.zeros(6, np.int64), 1, "traffic")
        with pytest.raises(ValueError, match="read-only"):
            reader.add_window(np.ones(6, np.int64), 1)
        assert reader.read_reference()[1] == 6 and int(owner.header[2]) % 2 == 0  # untouched, not left odd
        reader.close()
    finally:
        owner.close()
