"""Accuracy estimated without labels, per attribute and situation (CBPE: confidence-based performance
estimation, as NannyML names it).

If the bundle's probabilities are calibrated, the chance that an answered value is right is its
probability, so the expected accuracy of a set of products is the mean probability of the values
answered, and its 95% interval is mean +- 1.96 sqrt(sum p(1 - p)) / n (the right answers are a sum
of independent Bernoulli trials). It is an estimate that assumes calibration: it follows the
input's shift (covariate shift), where calibration holds; it cannot see label shift or a new kind
of product on which the model is confidently wrong (docs/trust.md says how far it was off).

`AccuracyEstimate` keeps the last `size` products of a stream (the server's window); `estimate()`
summarises any set (attrx score, the whole catalog). numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Z95 = 1.959964


def estimate(confidence: np.ndarray) -> dict | None:
    """The estimated accuracy of products answered with these probabilities, with its 95% interval."""
    p = np.asarray(confidence, dtype=np.float64)
    n = len(p)
    if n == 0:
        return None
    mean = float(p.mean())
    half = Z95 * float(np.sqrt((p * (1.0 - p)).sum())) / n
    return {"estimate": round(mean, 4), "low": round(max(0.0, mean - half), 4), "high": round(min(1.0, mean + half), 4),
            "products": n}


def by_situation(confidence: np.ndarray, situations: np.ndarray, names: Sequence[str]) -> dict:
    """{"all": estimate, situation: estimate} for one attribute's answers ([N] probabilities, [N]
    indices into names)."""
    out = {"all": estimate(confidence)}
    for k, name in enumerate(names):
        rows = situations == k
        if rows.any():
            out[name] = estimate(confidence[rows])
    return out


class AccuracyEstimate:
    """The last `size` products' answered probabilities and situations, per attribute."""

    def __init__(self, attributes: Sequence[str], situations: Sequence[str], size: int):
        self.attributes, self.names, self.size = list(attributes), list(situations), max(1, size)
        self.conf = np.zeros((self.size, len(self.attributes)), dtype=np.float64)
        self.sit = np.zeros((self.size, len(self.attributes)), dtype=np.int64)
        self.items = 0  # products seen; the window holds min(items, size)

    def add(self, confidence: np.ndarray, situations: np.ndarray) -> None:
        """[N, A] probabilities of the answered values and [N, A] situation indices, oldest first."""
        confidence, situations = confidence[-self.size:], situations[-self.size:]
        idx = (self.items + np.arange(len(confidence))) % self.size
        self.conf[idx], self.sit[idx] = confidence, situations
        self.items += len(confidence)

    def summary(self) -> dict[str, dict]:
        n = min(self.items, self.size)
        return {a: by_situation(self.conf[:n, j], self.sit[:n, j], self.names) for j, a in enumerate(self.attributes)}


class EstimateSums:
    """What the estimate needs of any number of products, as integers that add up across processes
    and resumed runs (attrx score, local and Ray): per attribute and situation, the products, the sum
    of p and the sum of p(1 - p), the last two in millionths."""

    SCALE = 1_000_000

    def __init__(self, attributes: Sequence[str], situations: Sequence[str]):
        self.attributes, self.names = list(attributes), list(situations)
        self.sums = np.zeros((len(self.attributes), len(self.names), 3), dtype=np.int64)

    @property
    def size(self) -> int:
        return self.sums.size

    def add(self, confidence: np.ndarray, situations: np.ndarray) -> None:
        """[N, A] probabilities of the answered values, [N, A] situation indices."""
        p = np.asarray(confidence, dtype=np.float64)
        # each product rounded on its own: the sums are then the same however the products are split
        # into batches, actors and resumed runs
        sp, sv = np.rint(p * self.SCALE), np.rint(p * (1 - p) * self.SCALE)
        n = len(self.names)
        for j in range(len(self.attributes)):
            k = situations[:, j].astype(np.int64)
            self.sums[j, :, 0] += np.bincount(k, minlength=n)[:n]
            self.sums[j, :, 1] += np.bincount(k, sp[:, j], minlength=n)[:n].astype(np.int64)
            self.sums[j, :, 2] += np.bincount(k, sv[:, j], minlength=n)[:n].astype(np.int64)

    def add_vector(self, v: np.ndarray) -> None:
        self.sums += np.asarray(v, dtype=np.int64).reshape(self.sums.shape)

    def summary(self) -> dict[str, dict]:
        """{attribute: {"all": estimate, situation: estimate}} as `estimate()` gives them."""
        out = {}
        for j, a in enumerate(self.attributes):
            rows = {"all": self.sums[j].sum(0), **{s: self.sums[j, k] for k, s in enumerate(self.names)}}
            out[a] = {s: _from_sums(*r) for s, r in rows.items() if r[0] > 0 or s == "all"}
        return out


def _from_sums(n: int, sp: int, sv: int) -> dict | None:
    if n == 0:
        return None
    mean = sp / EstimateSums.SCALE / n
    half = Z95 * float(np.sqrt(sv / EstimateSums.SCALE)) / n
    return {"estimate": round(mean, 4), "low": round(max(0.0, mean - half), 4), "high": round(min(1.0, mean + half), 4),
            "products": int(n)}
