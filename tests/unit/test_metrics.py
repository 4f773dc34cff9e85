import numpy as np
import pytest

from attrx.training.evaluation import metrics


def brute_force(scores, positive, target):
    """Try every distinct finite score as an inclusive threshold; max recall, ties to the higher one."""
    n_pos = sum(positive)
    best = None
    for t in sorted({s for s in scores if np.isfinite(s)}, reverse=True):
        acc = [s >= t for s in scores]
        tp = sum(a and p for a, p in zip(acc, positive, strict=True))
        pp = sum(acc)
        if pp and tp / pp >= target - 1e-12:
            r = tp / n_pos
            if best is None or r > best[1]:
                best = (t, r, tp / pp)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_recall_at_precision_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    # coarse scores give many ties; some items are never predicted (-inf)
    scores = np.round(rng.random(n), int(rng.integers(1, 3)))
    scores[rng.random(n) < 0.2] = -np.inf
    positive = rng.random(n) < rng.uniform(0.1, 0.9)
    if not positive.any():
        positive[0] = True
    for target in (0.5, 0.8, 0.9, 0.95, 1.0):
        got = metrics.recall_at_precision(scores, positive, target)
        ref = brute_force(scores.tolist(), positive.tolist(), target)
        if ref is None:
            assert got.threshold is None and got.recall is None
        else:
            assert got.threshold == pytest.approx(ref[0]) and got.recall == pytest.approx(ref[1])
            assert got.precision == pytest.approx(ref[2])


def test_ties_are_admitted_together():
    # at threshold 0.8 both tied items come in: precision 1/2 -> target 0.9 is only met at 0.9
    pt = metrics.recall_at_precision(np.array([0.9, 0.8, 0.8]), np.array([True, True, False]), 0.9)
    assert (pt.threshold, pt.recall) == (0.9, 0.5)


def test_unreachable_target():
    pt = metrics.recall_at_precision(np.array([0.9, 0.5]), np.array([False, True]), 0.95)
    assert pt.threshold is None
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([1, 1, 0])  # class 0's only confident prediction is wrong
    th = metrics.calibrate(probs, labels, [0.9])["0.90"]
    assert th[0] is None and th[1] == pytest.approx(0.8)
    rep = metrics.recall_report(probs, labels, [None, None], ["a", "b"], np.array([1, 2]), min_positives=1)
    assert rep["macro_recall"] == metrics.UNREACHABLE and rep["classes_unreachable"] == ["a", "b"]
    rep = metrics.recall_report(probs, labels, th, ["a", "b"], np.array([1, 2]), min_positives=1)
    assert rep["macro_recall"] == pytest.approx((0.0 + 0.5) / 2) and rep["classes_unreachable"] == ["a"]
    rep = metrics.recall_report(probs, labels, th, ["a", "b"], np.array([1, 2]), min_positives=2)
    assert rep["classes_counted"] == 1 and rep["classes_skipped_few_positives"] == 1


def test_accuracy_and_macro_f1():
    probs = np.eye(3)[[0, 1, 2, 2]]
    labels = np.array([0, 1, 1, -100])
    assert metrics.accuracy(probs, labels) == pytest.approx(2 / 3)
    assert metrics.macro_f1(probs, labels) == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert metrics.accuracy(probs, np.array([-1, 1, 2, 2])) == pytest.approx(0.75)  # unseen class counts wrong


def test_observing_a_batch_at_once_matches_observing_each_value():
    import numpy as np
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from attrx.service.telemetry.prometheus import UNIT_BUCKETS, observe_many

    values = np.random.default_rng(0).random(500).astype(np.float32)
    values[:8] = [0.0, 0.05, 0.1, 0.5, 0.95, 0.99, 1.0, 0.3]  # on the bounds: the bucket whose bound equals it
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("x", "x", buckets=UNIT_BUCKETS, registry=one)
    h2 = Histogram("x", "x", buckets=UNIT_BUCKETS, registry=many)
    for v in values.tolist():
        h1.observe(v)
    observe_many(h2, values)
    lines = [[x for x in generate_latest(r).decode().splitlines() if x.startswith(("x_bucket", "x_count"))]
             for r in (one, many)]
    assert lines[0] == lines[1] and len(lines[0]) == len(UNIT_BUCKETS) + 2
    sums = [r.get_sample_value("x_sum") for r in (one, many)]
    assert sums[1] == pytest.approx(sums[0], rel=1e-9)
