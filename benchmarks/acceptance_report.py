"""docs/RESULTS.md's acceptance section: what `accepted` promises, per condition and situation.

Reads the CMA-CLIP model's `attrx eval` results (metrics.json per condition) as answered by the
bundle's decisions ("full": thresholds per situation, conflicts, constraints) and, for comparison,
as a bundle before situations answered ("plain"), and checks the issue's targets. Reported, not
asserted: a target missed is printed with its figure.
"""

from __future__ import annotations

ATTRS = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]
# condition key in quality.py -> what it is; the targets' conditions are e, d, c (and a per situation)
TARGET_CONDITIONS = {"e": "label words stripped", "d": "title dropped", "c": "image dropped"}
FLOORS = {"0.90": 0.88, "0.95": 0.93}


def _ok(flag: bool) -> str:
    return "**met**" if flag else "**not met**"


def _p(st: dict | None) -> str:
    if not st or st.get("precision") is None:
        return "none accepted" if st else "-"
    lo, hi = st["ci95"]
    return f"{st['precision']:.3f} [{lo:.2f}, {hi:.2f}] at {st['coverage']:.1%}"


def condition_table(full: dict, plain: dict | None, cond: str) -> list[str]:
    keys = list(FLOORS)
    head = "| attribute | accuracy | " + " | ".join(f"P≥{k} as served" for k in keys)
    head += (" | " + " | ".join(f"P≥{k} before (plain)" for k in keys)) if plain else ""
    lines = [head + " |", "|---" * (2 + len(keys) * (2 if plain else 1)) + "|"]
    for a in ATTRS:
        r = full[cond][a]
        cells = [f"{r['accuracy']:.3f}"] + [_p(r["accepted_precision"][k]) for k in keys]
        if plain:
            cells += [_p(plain[cond][a]["accepted_precision"][k]) for k in keys]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return lines


def situation_table(full: dict) -> list[str]:
    lines = ["| attribute | situation | products | accuracy | P≥0.90 | P≥0.95 | conflicts |", "|---|---|---|---|---|---|---|"]
    for a in ATTRS:
        for s, x in full["a"][a]["situations"].items():
            lines.append(f"| {a} | {s} | {x['n']} | {x['accuracy']:.3f} | {_p(x['accepted']['0.90'])} | "
                         f"{_p(x['accepted']['0.95'])} | {x['conflicts']} |")
    return lines


def title_group_table(full: dict, plain: dict | None, attr: str = "baseColour") -> list[str]:
    lines = [f"| {attr}: the title... | products | accuracy | accepted at P≥0.90 | precision of accepted (95% CI) "
             "| one-sided 95% upper bound | conflicts flagged | before: accepted, precision |", "|---|---|---|---|---|---|---|---|"]
    names = {"names_label": "names the catalog's label", "names_other": "names another label",
             "silent": "names none (silent)", "no_title": "is missing"}
    for g, x in full["a"][attr]["title_groups"].items():
        st = x["accepted"]["0.90"]
        pb = (plain or {}).get("a", {}).get(attr, {}).get("title_groups", {}).get(g, {}).get("accepted", {}).get("0.90")
        before = f"{pb['coverage']:.0%}, {pb['precision']}" if pb else "-"
        lines.append(f"| {names[g]} | {x['n']} | {x['accuracy']:.3f} | {st['coverage']:.0%} | {_p(st)} | "
                     f"{st['upper95'] if st['upper95'] is not None else '-'} | {x['conflicts']} | {before} |")
    return lines


def stand_in_table(full: dict) -> list[str]:
    """The copies against the products they stand in for: natural silent titles (a) vs titles with
    every label word removed (e), at the same thresholds, situation silent+image."""
    lines = ["| attribute | natural silent (a): products, accuracy, P≥0.90 | label words removed (e): products, "
             "accuracy, P≥0.90 |", "|---|---|---|"]
    for a in ATTRS:
        cells = []
        for cond in ("a", "e"):
            x = full.get(cond, {}).get(a, {}).get("situations", {}).get("silent+image")
            cells.append("-" if not x else f"{x['n']}, {x['accuracy']:.3f}, {_p(x['accepted']['0.90'])}")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return lines


def records_table(records: dict, plain_records: dict | None) -> list[str]:
    lines = ["| condition | whole-record accuracy | combinations never seen in training per 1,000 | `other` answered | "
             "`other` accepted | before: whole-record, unseen per 1,000, `other` accepted |", "|---|---|---|---|---|---|"]
    for cond, rec in records.items():
        r = rec["0.90"]
        pr = ((plain_records or {}).get(cond) or {}).get("0.90")
        before = f"{pr['whole_record_accuracy']}, {pr['unseen_combinations_per_1000']}, {pr['other_accepted']}" if pr else "-"
        lines.append(f"| ({cond}) | {r['whole_record_accuracy']} | {r['unseen_combinations_per_1000']} | "
                     f"{r['other_answered']} ({r['other_answered_rate']:.1%}) | {r['other_accepted']} | {before} |")
    return lines


def _precision_targets(full: dict) -> list[str]:
    out = []
    for cond, desc in TARGET_CONDITIONS.items():
        misses = [f"{a} P≥{k} {_p(full[cond][a]['accepted_precision'][k])}" for a in ATTRS for k, floor in FLOORS.items()
                  if (full[cond][a]["accepted_precision"][k]["precision"] or 0.0) < floor]
        out.append(f"({cond}) {desc}: precision ≥ 0.88 at P≥0.90 and ≥ 0.93 at P≥0.95 for every attribute: "
                   + _ok(not misses) + (" (misses: " + "; ".join(misses) + ")" if misses else ""))
    misses = [f"{a} {s} P≥{k} {_p(x['accepted'][k])}" for a in ATTRS for s, x in full["a"][a]["situations"].items()
              if x["n"] >= 200 for k, floor in FLOORS.items() if (x["accepted"][k]["precision"] or 0.0) < floor]
    out.append("(a) titles as they are, every situation with ≥ 200 products: " + _ok(not misses)
               + (" (misses: " + "; ".join(misses) + ")" if misses else ""))
    return out


def _coverage_targets(full: dict, plain: dict | None) -> list[str]:
    c = full["e"]["baseColour"]["accepted_precision"]["0.90"]["coverage"]
    d = full["d"]["baseColour"]["accepted_precision"]["0.90"]["coverage"]
    out = [f"baseColour coverage at P≥0.90: {c:.3f} with label words stripped (target ≥ 0.20) {_ok(c >= 0.20)}; "
           f"{d:.3f} with the title dropped (target ≥ 0.15) {_ok(d >= 0.15)}"]
    if plain:
        falls = {a: plain["a"][a]["accepted_precision"]["0.90"]["coverage"] - full["a"][a]["accepted_precision"]["0.90"]["coverage"]
                 for a in ATTRS}
        worst = max(falls, key=falls.get)
        out.append("Coverage at P≥0.90 with titles as they are falls by at most 0.02 for any attribute: largest fall "
                   f"{falls[worst]:+.3f} ({worst}); fall per attribute (negative: it rose) "
                   + ", ".join(f"{a} {v:+.3f}" for a, v in falls.items()) + ": "
                   + _ok(falls[worst] <= 0.02))
    return out


def _record_and_conflict_targets(full: dict, plain: dict | None, records: dict, plain_records: dict | None) -> list[str]:
    g = full["a"]["baseColour"]["title_groups"]
    other, own = g.get("names_other"), g.get("names_label")
    out = []
    if other and own:
        acc = other["accepted"]["0.90"]["coverage"]
        flagged = own["conflicts"] / max(1, own["n"])
        out.append(f"Title names another colour than the label: {acc:.0%} accepted at P≥0.90 (target ≤ 25%) {_ok(acc <= 0.25)}; "
                   f"title names the label: {flagged:.1%} flagged as conflicts (target ≤ 5%) {_ok(flagged <= 0.05)}")
    silent = g.get("silent")
    if silent:
        st = silent["accepted"]["0.90"]
        out.append(f"Natural silent titles (baseColour, {silent['n']} products): precision {_p(st)}, one-sided 95% upper "
                   f"bound {st['upper95']} (target ≥ 0.90) {_ok((st['upper95'] or 0) >= 0.90)}")
    r = records["a"]["0.90"]
    out.append(f"Combinations never seen in training: {r['unseen_combinations_per_1000']} per 1,000 (target ≤ 1) "
               f"{_ok(r['unseen_combinations_per_1000'] <= 1)}; `other` accepted {r['other_accepted']} times (target 0) "
               f"{_ok(r['other_accepted'] == 0)}")
    if plain and plain_records:
        pr = plain_records["a"]["0.90"]
        drops = {a: plain["a"][a]["accuracy"] - full["a"][a]["accuracy"] for a in ATTRS}
        worst = max(drops, key=drops.get)
        out.append(f"Whole-record accuracy {r['whole_record_accuracy']} vs {pr['whole_record_accuracy']} before "
                   f"{_ok(r['whole_record_accuracy'] >= pr['whole_record_accuracy'])}; largest accuracy drop "
                   f"{drops[worst]:+.4f} ({worst}, target ≤ 0.005) {_ok(drops[worst] <= 0.005)}")
    return out


def targets(full: dict, plain: dict | None, records: dict, plain_records: dict | None) -> list[str]:
    return (_precision_targets(full) + _coverage_targets(full, plain)
            + _record_and_conflict_targets(full, plain, records, plain_records))


def render(full: dict, plain: dict | None, records: dict, plain_records: dict | None, conditions: dict) -> list[str]:
    """The Markdown lines of the section. full/plain: {condition: {attribute: eval result}}."""
    lines = ["", "## What `accepted` promises, per condition and situation (CMA-CLIP)", "",
             "Realised precision of the accepted answers on the test split, with its 95% Clopper-Pearson interval, "
             "at the coverage (accepted / products) it comes with; an empty accepted set is reported as such, never "
             "as precision 1. *As served*: the bundle's decisions (thresholds per attribute x situation x class, "
             "calibrated on the validation split and its copies; title-image conflicts; record constraints; `other` "
             "never accepted). *Before (plain)*: the same model with per-class thresholds in every situation, as "
             "bundles before schema v3 answered (`attrx eval --decisions plain`).", "", "### Targets", ""]
    lines += [f"- {t}" for t in targets(full, plain, records, plain_records)]
    for cond in ("a", "e", "d", "c"):
        if cond in full:
            lines += ["", f"### ({cond}) {conditions[cond][0]}", ""] + condition_table(full, plain, cond)
    lines += ["", "### Per situation, titles as they are (a)", ""] + situation_table(full)
    lines += ["", "### baseColour by what the title says (a)", ""] + title_group_table(full, plain)
    lines += ["", "### Are the copies a fair stand-in for silent titles?", "",
              "Calibration copies titles with label words removed; here the test products whose title is "
              "naturally silent are set beside the test products with every label word removed, at the same "
              "thresholds.", ""] + stand_in_table(full)
    lines += ["", "### Records", ""] + records_table(records, plain_records)
    lines += ["", "![precision vs coverage per situation, baseColour](figures/situations_baseColour_cma_clip.png) "
              "![articleType](figures/situations_articleType_cma_clip.png)", ""]
    return lines
