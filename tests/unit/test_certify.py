"""Certified thresholds (Learn-then-Test, fixed sequence): the guarantee holds on simulated data,
the count of reviews that would certify a target, and the contradiction check of a small situation."""

from __future__ import annotations

import numpy as np

from attrx.training.evaluation.certify import (
    certified_threshold,
    contradicts,
    first_size,
    p_value,
    reviews_to_certify,
)
from attrx.training.evaluation.metrics import recall_at_precision


def _draw(rng, n):
    """Scores with precision rising with the score: P(right | s) = 0.55 + 0.45 s."""
    s = rng.random(n)
    return s, rng.random(n) < 0.55 + 0.45 * s


def _true_precision(thr):
    # mean of 0.55 + 0.45 s over s uniform on [thr, 1]
    return 0.55 + 0.45 * (1 + thr) / 2


def test_certified_thresholds_miss_the_target_at_most_delta_of_the_time():
    rng = np.random.default_rng(0)
    misses = {"certified": 0, "bound at 0.5": 0}
    trials = 300
    for _ in range(trials):
        s, right = _draw(rng, 400)
        for name, thr in (("certified", certified_threshold(s, right, 0.9, 0.1)),
                          ("bound at 0.5", recall_at_precision(s, right, 0.9, 0.5).threshold)):
            if thr is not None and _true_precision(thr) < 0.9:
                misses[name] += 1
    assert misses["certified"] / trials <= 0.1
    assert misses["bound at 0.5"] > misses["certified"]  # the point rule misses more often: why it changed


def test_a_target_no_threshold_reaches_is_not_certified():
    rng = np.random.default_rng(1)
    s = rng.random(500)
    right = rng.random(500) < 0.8  # precision 0.8 at every threshold
    assert certified_threshold(s, right, 0.9, 0.1) is None
    assert certified_threshold(s[:10], np.ones(10, dtype=bool), 0.9, 0.1) is None  # too few to test


def test_reviews_to_certify():
    assert first_size(0.9, 0.1) == 44 and first_size(0.95, 0.1) == 90
    assert reviews_to_certify(30, 30, 0.9) == 22  # right at 31/32: 52 rows pass, 51 do not
    assert reviews_to_certify(2, 2, 0.9) is None  # 2 of 2 is no record: (2 + 1) / (2 + 2) = 0.75
    assert reviews_to_certify(17, 20, 0.9) is None  # 0.85 does not beat 0.9
    more = reviews_to_certify(93, 100, 0.9)
    rate = 94 / 102
    assert more is not None and more > 1
    n = 100 + more
    assert p_value(int(np.floor(rate * n)), n, 0.9) <= 0.1
    assert p_value(int(np.floor(rate * (n - 1))), n - 1, 0.9) > 0.1


def test_a_small_situation_contradicts_only_on_evidence():
    assert contradicts(10, 20, 0.9)  # half right: clearly below 0.9
    assert not contradicts(19, 20, 0.9)
    assert not contradicts(0, 0, 0.9) and not contradicts(3, 3, 0.9)
