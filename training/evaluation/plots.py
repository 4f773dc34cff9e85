"""`attrx eval`'s figures: precision-recall per attribute, precision-coverage per situation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attrx.service.contract.situations import SITUATIONS


def plot_pr(path: Path, attr: str, probs: np.ndarray, labels: np.ndarray, thresholds: dict[str, list]) -> None:
    """Precision-recall of the attribute's accepted predictions as one confidence threshold moves,
    with the operating points of the calibrated per-class thresholds on this (test) split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = probs.max(1)
    pred = probs.argmax(1)
    correct = pred == labels
    order = np.argsort(-conf, kind="stable")
    tp = np.cumsum(correct[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=100)
    ax.plot(recall, precision, lw=2, label="one threshold for all classes")
    for (key, ths), colour in zip(thresholds.items(), ("tab:orange", "tab:red", "tab:purple"), strict=False):
        t = float(key)
        thr = np.array([np.inf if x is None else x for x in ths])
        accepted = conf >= thr[pred]
        if accepted.any():
            p_op, r_op = correct[accepted].mean(), (correct & accepted).sum() / len(labels)
            ax.plot([r_op], [p_op], "o", color=colour, ms=8,
                    label=f"calibrated for P≥{t:.2f}: P={p_op:.3f} R={r_op:.3f}")
        ax.axhline(t, ls="--", lw=1, color=colour, alpha=0.6)
    ax.set_xlabel("recall (accepted and correct / all)")
    ax.set_ylabel("precision (correct / accepted)")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(min(0.5, float(precision.min()) - 0.02), 1.01)
    ax.set_title(f"{attr}: test split (n={len(labels)})")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_situations(path: Path, attr: str, probs: np.ndarray, labels: np.ndarray, situations: np.ndarray,
                    decisions: dict, j: int, min_rows: int = 30) -> None:
    """Per situation (with at least min_rows products): precision against coverage as one confidence
    threshold moves over the answers that need no other review, and the calibrated operating points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(decisions.values()))
    value, conf = first.value[j], first.confidence[j]
    open_ = first.reason[j] >= 3  # no_support, below_threshold, or accepted (-1): only the threshold decides
    open_ |= first.reason[j] < 0
    lab = labels != -100
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    for k, name in enumerate(SITUATIONS):
        rows = lab & (situations == k)
        if rows.sum() < min_rows:
            continue
        n = int(rows.sum())
        c, ok = conf[rows & open_], (value == labels)[rows & open_]
        order = np.argsort(-c, kind="stable")
        tp = np.cumsum(ok[order])
        line = ax.plot(np.arange(1, len(order) + 1) / n, tp / np.arange(1, len(order) + 1), lw=1.6,
                       label=f"{name} (n={n})")[0]
        for key, d in decisions.items():
            acc = d.accepted[j][rows]
            if acc.any():
                ax.plot([acc.mean()], [(value[rows] == labels[rows])[acc].mean()], "o", color=line.get_color(),
                        ms=6 if key == next(iter(decisions)) else 4)
    for key in decisions:
        ax.axhline(float(key), ls="--", lw=0.8, color="grey", alpha=0.6)
    ax.set_xlabel("coverage (accepted / products in the situation)")
    ax.set_ylabel("precision of the accepted")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0.4, 1.01)
    ax.set_title(f"{attr}: precision vs coverage per situation (dots: calibrated targets)", fontsize=9)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
