"""The accuracy estimate: its formula, the window, and integer sums that do not depend on how the
products were split into batches."""

from __future__ import annotations

import numpy as np
import pytest

from attrx.service.telemetry.estimate import AccuracyEstimate, EstimateSums, estimate


def test_the_estimate_is_the_mean_probability_with_its_bernoulli_interval():
    p = np.array([0.9, 0.8, 0.6, 1.0])
    e = estimate(p)
    half = 1.959964 * np.sqrt((p * (1 - p)).sum()) / 4
    assert e["estimate"] == pytest.approx(0.825) and e["products"] == 4
    assert e["low"] == pytest.approx(0.825 - half, abs=1e-4) and e["high"] == 1.0  # clipped to [0, 1]
    assert estimate(np.array([])) is None


def test_the_window_keeps_the_last_products_per_situation():
    w = AccuracyEstimate(["colour"], ["a", "b"], size=3)
    w.add(np.array([[0.1], [0.2], [0.9], [0.8]]), np.array([[0], [0], [1], [1]]))
    s = w.summary()["colour"]
    assert s["all"]["products"] == 3 and s["all"]["estimate"] == pytest.approx((0.2 + 0.9 + 0.8) / 3, abs=1e-4)
    assert s["a"]["products"] == 1 and s["b"]["products"] == 2


def test_sums_do_not_depend_on_the_batches():
    rng = np.random.default_rng(0)
    p, k = rng.random((500, 2)), rng.integers(0, 5, (500, 2))
    whole, parts = EstimateSums(["x", "y"], list("abcde")), EstimateSums(["x", "y"], list("abcde"))
    whole.add(p, k)
    for i in range(0, 500, 7):
        parts.add(p[i:i + 7], k[i:i + 7])
    assert (whole.sums == parts.sums).all()
    assert whole.summary()["x"]["all"]["estimate"] == pytest.approx(p[:, 0].mean(), abs=1e-4)
