"""The "What to trust" section of docs/RESULTS.md, from the JSON files benchmarks/trust.py printed
(`python benchmarks/trust.py render --inputs DIR`): written between its markers, or appended."""

from __future__ import annotations

import json
from pathlib import Path

from trust import CELL_MIN, ROOT

START, END = "<!-- trust:start (benchmarks/trust.py render) -->", "<!-- trust:end -->"


def _f(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def _matcher_md(m: dict) -> list[str]:
    out = ["| attribute | test titles | name a value, labels only | with variants | silent -> named |", "|---|---|---|---|---|"]
    out += [f"| {a} | {r['titles']} | {r['named_labels_only']} | {r['named_with_variants']} | {_f(r['silent_to_named'])} |"
            for a, r in m.items()]
    return out


def _compare_md(c: dict, attrs: tuple[str, ...]) -> list[str]:
    out = ["| condition | attribute, situation | before: products, precision (coverage) | after |", "|---|---|---|---|"]
    for cond, rows in c.items():
        for k, v in rows.items():
            b, a = v.get("before"), v.get("after")
            if not b or not a or k.split()[0] not in attrs or (b["n"], b["coverage"]) == (a["n"], a["coverage"]):
                continue
            out.append(f"| ({cond}) | {k} | {b['n']}, {_f(b['precision'])} ({_f(b['coverage'], 2)}) | "
                       f"{a['n']}, {_f(a['precision'])} ({_f(a['coverage'], 2)}) |")
    return out


def _families_md(c: dict, attr: str) -> list[str]:
    out = ["| condition | situation | products | value: precision (coverage) | family or value: precision (coverage) "
           "| at the family: products, precision |", "|---|---|---|---|---|---|"]
    for cond, rows in c.items():
        for k, v in rows.items():
            if not k.startswith(attr + " ") or "after, family or value" not in v:
                continue
            a, f = v["after"], v["after, family or value"]
            out.append(f"| ({cond}) | {k.split()[1]} | {a['n']} | {_f(a['precision'])} ({_f(a['coverage'], 2)}) | "
                       f"{_f(f['precision'])} ({_f(f['coverage'], 2)}) | {f['at_family']}, {_f(f['family_precision'])} |")
    return out


def _certify_md(c: dict) -> list[str]:
    out = [f"| rule | cells with >= {CELL_MIN} test rows | of them accepting | missing P >= 0.90 | miss rate | coverage |",
           "|---|---|---|---|---|---|"]
    for rule, r in c["summary"].items():
        out.append(f"| {rule} | {r['cells']} | {r['cells_accepting']} | {r['misses']} | {_f(r['miss_rate'])} | "
                   f"{_f(r['coverage'])} |")
    return out


def _estimate_md(e: dict) -> list[str]:
    attrs = list(next(iter(e.values())))
    out = ["| stream | " + " | ".join(attrs) + " |", "|---|" + "---|" * len(attrs)]
    for s, r in e.items():
        out.append(f"| {s} | " + " | ".join(f"{_f(r[a]['estimated'])} vs {_f(r[a]['realised'])}" for a in attrs) + " |")
    return out


def _findings_md(judgements: Path, noise: dict | None, judged_p: dict | None, dups: dict | None) -> list[str]:
    import csv
    from collections import Counter, defaultdict

    rows = list(csv.DictReader(open(judgements, newline="", encoding="utf-8")))
    verdicts = ("label wrong", "synonym", "label right", "unclear")
    total, by = Counter(r["verdict"] for r in rows), defaultdict(Counter)
    for r in rows:
        by[r["attribute"]][r["verdict"]] += 1
    out = [f"The {len(rows)} strongest findings, judged blind by the rubric in `benchmarks/label_rubric.md` "
           "(the judgements: `benchmarks/label_judgements.csv`):", "",
           "| attribute | findings | " + " | ".join(verdicts) + " |", "|---|---|" + "---|" * len(verdicts)]
    for x, c in sorted(by.items(), key=lambda t: -sum(t[1].values())):
        out.append(f"| {x} | {sum(c.values())} | " + " | ".join(str(c[v]) for v in verdicts) + " |")
    out += [f"| all | {len(rows)} | " + " | ".join(str(total[v]) for v in verdicts) + " |", ""]
    if noise:
        out += ["Pairs of products with the very same image bytes whose labels differ (`trust.py noise`): " + ", ".join(
            f"{x} {r['disagree']}/{r['pairs']}" for x, r in noise["attributes"].items()) + ".", ""]
    if dups:
        out += ["Of the audited products whose exact image appears again with another label, flagged by the audit "
                "(`trust.py dupcheck`; most are training rows, in sample for the bundle): " + ", ".join(
                    f"{x} {r['flagged']}/{r['products']}" for x, r in dups.items() if r["products"]) + ".", ""]
    if judged_p:
        out += ["| attribute | accepted at P >= 0.90 (test split) | precision, stored labels | precision, judged labels |",
                "|---|---|---|---|"]
        out += [f"| {x} | {r['accepted']} of {r['of']} | {_f(r['precision_stored_labels'])} | "
                f"{_f(r['precision_judged_labels'])} |" for x, r in judged_p.items()]
    return out


def _exclude_md(e: dict) -> list[str]:
    out = ["| attribute | " + " | ".join(e) + " |", "|---|" + "---|" * len(e)]
    attrs = list(next(iter(e.values())))
    for x in attrs:
        out.append(f"| {x} | " + " | ".join(f"{_f(r[x]['accuracy'])}, {_f(r[x]['precision'])} ({_f(r[x]['coverage'], 2)})"
                                           for r in e.values()) + " |")
    return out


KEPT = ("compare", "families", "judged", "noise", "dupcheck", "exclude")


def render(a) -> dict:
    """The "What to trust" section of RESULTS.md from the JSON files of the other commands."""
    d = Path(a.inputs)
    kept = Path(a.kept) if getattr(a, "kept", None) else None

    def load(name):
        """The run's own file; for the measurements one run of bench-quality cannot make (before/after
        checkpoints, a person's judgements, cross-fitted folds), the kept one in --kept first."""
        f = d / f"{name}.json"
        if kept is not None and name in KEPT and (kept / f"{name}.json").is_file():
            f = kept / f"{name}.json"
        return json.loads(f.read_text()) if f.is_file() else None

    parts = [START, "## What to trust", "", f"Measured by `benchmarks/trust.py` ({a.source}); what each "
             "mechanism does: [what to trust](trust.md).", ""]
    sections = (("matcher", "### How titles spell the values", lambda x: _matcher_md(x)),
                ("compare", "### The matcher, before and after (value level, P >= 0.90, rule before certification)",
                 lambda x: _compare_md(x, ("gender", "subCategory", "articleType", "baseColour", "season"))),
                ("families", "### Families: colour at the family or the value (P >= 0.90)",
                 lambda x: _families_md(x, "baseColour")),
                ("certify", "### Certified thresholds against the rule before them (P >= 0.90, delta 0.1)", _certify_md),
                ("estimate", "### Accuracy without labels: estimated vs realised", _estimate_md))
    for name, title, fn in sections:
        x = load(name) if name != "families" else (load("families") or load("compare"))
        if x is not None:
            parts += [title, "", *fn(x), ""]
    judgements = Path(a.judgements or ROOT / "benchmarks" / "label_judgements.csv")  # the file render reads
    if judgements.is_file() and load("judged") is not None:
        parts += ["### Label findings", "", *_findings_md(judgements, load("noise"), load("judged"), load("dupcheck")), ""]
    if load("exclude") is not None:
        parts += ["### Training without the suspect labels (test split: accuracy, accepted precision at P >= 0.90 "
                  "(coverage))", "", *_exclude_md(load("exclude")), ""]
    parts.append(END)
    res = Path(a.results)
    text = res.read_text() if res.is_file() else ""
    block = "\n".join(parts)
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    res.write_text(text)
    return {"written": str(res)}
