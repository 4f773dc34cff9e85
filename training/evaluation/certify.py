"""Certified thresholds: realised precision >= target with probability >= 1 - delta on exchangeable data.

Learn-then-Test with a fixed-sequence test (Angelopoulos et al., 2021; MAPIE's risk_control has it).
The candidate thresholds are the scores at which m0, 1.25 m0, ... of the n rows would be accepted,
most conservative first: a grid read from the scores alone, never from the labels. m0 is the larger
of n/8 and twice the fewest rows that, all right, reject "precision < target" (44 at 0.90 and
delta 0.1, 90 at 0.95): a first test on a handful of rows fails on one unlucky error and ends the
sequence, so it starts where a few errors are affordable. For
each, the null hypothesis "precision < target" is tested with the exact binomial p-value
P(Binom(m, target) >= k) of its m accepted rows, k of them right; the sequence stops at the first
threshold it cannot reject at `delta`, and the last rejected one is chosen. Testing in a fixed
order spends the whole delta on each step and still bounds the chance that any chosen threshold
misses its target by delta.

Also here: how many more reviewed products, at the current error rate, would certify a target
that is not, and whether a small situation's own rows contradict its parent's thresholds.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta, binom

DELTA = 0.1
MIN_ACCEPTED = 20  # the first candidate of the sequence accepts at least this many rows
GROWTH = 1.25


def first_size(target: float, delta: float) -> int:
    """m0: twice the fewest all-right rows that reject "precision < target" at delta."""
    return max(MIN_ACCEPTED, 2 * int(math.ceil(math.log(delta) / math.log(target))))


def p_value(k: int, m: int, target: float) -> float:
    """P(Binom(m, target) >= k): small when k of m right is unlikely below the target precision."""
    return float(binom.sf(k - 1, m, target)) if m else 1.0


FIRST_SHARE = 8  # the sequence's first test takes at least 1/8 of the rows


def _grid(n: int, m0: int) -> list[int]:
    m0 = max(m0, -(-n // FIRST_SHARE))
    sizes, m = [], m0
    while m < n:
        sizes.append(m)
        m = max(m + 1, int(math.ceil(m * GROWTH)))
    return [*sizes, n] if n >= m0 else []


def certified_threshold(scores: np.ndarray, positive: np.ndarray, target: float, delta: float = DELTA
                        ) -> float | None:
    """The lowest threshold of the fixed sequence that certifies the target (None: the first fails)."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    s, p = scores[finite], np.asarray(positive, dtype=bool)[finite]
    order = np.argsort(-s, kind="stable")
    s, tp = s[order], np.cumsum(p[order])
    chosen = None
    for m in _grid(len(s), first_size(target, delta)):
        m_all = int(np.searchsorted(-s, -s[m - 1], side="right"))  # a threshold admits its whole tie group
        if p_value(int(tp[m_all - 1]), m_all, target) > delta:
            break
        chosen = float(s[m - 1])
    return chosen


def reviews_to_certify(k: int, m: int, target: float, delta: float = DELTA, limit: int = 100_000) -> int | None:
    """How many more reviewed products, right at the rate (k + 1) / (m + 2) (k of m, smoothed so that
    2 of 2 right is not taken for a perfect record), would make a test of the sequence pass on m +
    more of them (at least one, the caller asking of a target not certified; at least the sequence's
    first size in all); None when that rate does not beat the target."""
    rate = (k + 1) / (m + 2)
    if rate <= target:
        return None
    m0 = first_size(target, delta)
    lo = hi = max(m + 1, m0)
    while p_value(int(math.floor(rate * hi)), hi, target) > delta:
        if hi > limit:
            return None
        lo, hi = hi, hi * 2
    while lo < hi:  # the smallest passing size in [lo, hi]
        mid = (lo + hi) // 2
        if p_value(int(math.floor(rate * mid)), mid, target) <= delta:
            hi = mid
        else:
            lo = mid + 1
    return hi - m


def contradicts(k: int, m: int, target: float, delta: float = DELTA) -> bool:
    """A situation's own accepted rows (k of m right) say its precision is below the target at
    1 - delta (their one-sided Clopper-Pearson upper bound is under it)."""
    if m == 0 or k == m:
        return False
    return float(beta.ppf(1 - delta, k + 1, m - k)) < target
