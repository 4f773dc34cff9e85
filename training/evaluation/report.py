"""`attrx eval --report DIR`: figures and a Markdown summary for any checkpoint and catalog."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def _fmt(v) -> str:
    if v is None:
        return "-"
    return v if isinstance(v, str) else f"{v:.3f}"


def write_report(result: dict, image_weights: dict[str, np.ndarray], out: Path, pr_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    attrs = list(result["attributes"])
    r = result["attributes"]

    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(attrs), 3.8), dpi=100)
    x = np.arange(len(attrs))
    for k, (key, label) in enumerate((("accuracy", "accuracy"), ("macro_f1", "macro-F1"))):
        vals = [r[a][key] or 0 for a in attrs]
        ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=label)
    ax.set_xticks(x, attrs, rotation=20)
    ax.set_ylim(0, 1.02)
    ax.set_title("accuracy and macro-F1 per attribute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(attrs), figsize=(3.2 * len(attrs), 3.0), dpi=100, squeeze=False)
    for ax, a in zip(axes[0], attrs, strict=True):
        w = image_weights.get(a, np.array([]))
        ax.hist(w, bins=np.linspace(0, 1, 21), color="tab:purple")
        ax.set_title(f"{a}: image weight (n={len(w)})", fontsize=9)
        ax.set_xlim(0, 1)
    fig.suptitle("modality-attention weight of the image, products with title and image")
    fig.tight_layout()
    fig.savefig(out / "image_weights.png")
    plt.close(fig)
    for a in attrs:
        src = pr_dir / f"pr_{a}.png"
        if src.is_file() and src.resolve() != (out / src.name).resolve():
            shutil.copyfile(src, out / src.name)

    targets = [f"{t:.2f}" for t in result["precision_targets"]]
    c = result["conditions"]
    lines = [
        "# attrx evaluation report", "",
        f"- checkpoint: `{result['checkpoint']}`",
        f"- catalog: `{result['catalog']}` ({'every row' if result['split'] == 'all' else 'test split'}: "
        f"{result['splits']['test']} products; {result['rows_skipped']} rows skipped as unreadable)",
        f"- conditions: title {'removed' if c['drop_title'] else 'kept'}, image {'removed' if c['drop_image'] else 'kept'}"
        + (f", words of {', '.join(c['strip_label_words'])} removed from titles" if c["strip_label_words"] else "")
        + (f"; {c['rows_excluded_nothing_left']} products had nothing left and were left out"
           if c["rows_excluded_nothing_left"] else ""), "",
        "| attribute | n | accuracy | macro-F1 | " + " | ".join(f"recall @ P≥{t} (classes)" for t in targets)
        + " | mean image weight | unseen labels |",
        "|---" * (6 + len(targets)) + "|",
    ]
    for a in attrs:
        x = r[a]
        rap = [f"{_fmt(x['recall_at_precision'][t]['macro_recall'])} ({x['recall_at_precision'][t]['classes_counted']})"
               for t in targets]
        lines.append(f"| {a} | {x['n_test']} | {_fmt(x['accuracy'])} | {_fmt(x['macro_f1'])} | " + " | ".join(rap)
                     + f" | {_fmt(x['mean_image_weight'])} | {x['unseen_labels']['count']} |")
    lines += ["", "Recall at precision uses per-class thresholds calibrated on validation; a class whose target "
              "is unreachable is never accepted and counts with recall 0.", "",
              "![accuracy](accuracy.png)", "", "![image weights](image_weights.png)", ""]
    lines += [f"![{a}](pr_{a}.png)" for a in attrs]
    lines += _concept_lines(result.get("concepts"), pr_dir, out)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return out / "summary.md"


def _concept_lines(con: dict | None, pr_dir: Path, out: Path) -> list[str]:
    """The concept head's section (SIMLA): which colour words the image itself backs."""
    if not con:
        return []
    name = f"concepts_{con['attribute']}.png"
    if (pr_dir / name).is_file() and (pr_dir / name).resolve() != (out / name).resolve():
        shutil.copyfile(pr_dir / name, out / name)
    return ["", "## What the image itself backs (the concept head)", "",
            f"From the image alone, the concept head ranks the true {con['attribute']} first among all "
            f"{con['words']} colour words of the catalog for {_fmt(con['rank1'])} of {con['products']} products "
            f"with an image and a labelled colour ({con['coverage']:.0%} of the products).", "", f"![concepts]({name})"]
