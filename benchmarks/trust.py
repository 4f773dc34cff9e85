"""What to trust, measured on one checkpoint: the matcher, certified thresholds, the accuracy estimate.

    python benchmarks/trust.py matcher  --checkpoint CK --catalog C
    python benchmarks/trust.py certify  --checkpoint CK --catalog C [--seeds 1,2,3]
    python benchmarks/trust.py estimate --checkpoint CK --catalog C
    python benchmarks/trust.py compare  --evals OLD_CK NEW_CK [--attribute baseColour]
    python benchmarks/trust.py noise    [--catalog C]
    python benchmarks/trust.py judged   --scored SCORED.jsonl --judgements benchmarks/label_judgements.csv --catalog C
    python benchmarks/trust.py render   --inputs DIR [--results docs/RESULTS.md]

- matcher: per attribute, the share of the test split's titles that name a value with the
  checkpoint's label_variants.json but not with the labels alone (silent -> named).
- certify: the validation and test products of the checkpoint and their copies (label words
  stripped, title dropped, image dropped: the calibration set), split into a calibration half and a
  test half four ways (the checkpoint's own validation/test split, and --seeds re-splits of the same
  products); on each, thresholds at P>=0.90 by the rule before certification (the one-sided bound at
  confidence 0.5) and by the certified rule (delta 0.1), and their realised precision and coverage
  on the test half per (attribute, situation). A cell counts when it has >= 100 test rows and
  accepts something; the certified rule should miss in at most delta of them.
- estimate: the estimated accuracy (mean probability of the answered value) against the realised one,
  per attribute, on the test split as it is and on shifted streams: titles removed, images removed,
  and category mixtures (one masterCategory at a time).
- compare: per condition (a-e) and situation, value-level precision and coverage at P>=0.90 of two
  evaluated checkpoints (`attrx eval` of each condition, as benchmarks/quality.py runs them), and
  the family-or-value level of the second.

- noise: per attribute, the share of pairs of products with the very same image bytes whose
  labels differ (the catalog's own label noise).
- judged: accepted precision on a scored test split against the stored labels and against the
  labels corrected by a person's judgements of label findings (benchmarks/label_rubric.md).
- dupcheck: among the audited products whose exact image bytes appear again with another label,
  how many the audit flagged.
- render: the "What to trust" section of docs/RESULTS.md (between its markers) from the JSON files
  the others printed, saved as DIR/matcher.json, compare.json, certify.json and estimate.json.

Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET, KEY, CELL_MIN = 0.90, "0.90", 100


def _load(ck_path: str, catalog: str, scratch: Path):
    from attrx.training.evaluation.evaluate import _prepare_rows, matcher_of
    from attrx.training.models.checkpoint import load_checkpoint

    ck = load_checkpoint(ck_path)
    data = _prepare_rows(ck, catalog, "test", False, False, [], scratch, False)[0]
    words, variants = matcher_of(ck)
    return ck, data, words, variants


def matcher(a) -> dict:
    from attrx.service.catalog.reader import read_catalog
    from attrx.service.contract.situations import label_pattern
    from attrx.training.data.encode import split_of
    from attrx.training.models.checkpoint import load_checkpoint

    ck = load_checkpoint(a.checkpoint)
    from attrx.training.evaluation.evaluate import matcher_of

    words, _ = matcher_of(ck)
    labels = ck.meta.get("label_words") or {x: list(c) for x, c in ck.classes.items()}
    test = [p for p in read_catalog(a.catalog, ck.attributes).products
            if p.title and split_of(p.id, **ck.meta["split"]) == "test"]
    out = {}
    for x in ck.attributes:
        old, new = label_pattern(labels[x]), label_pattern(words[x])
        o = sum(bool(old.search(p.title)) for p in test)
        n = sum(bool(new.search(p.title)) for p in test)
        out[x] = {"titles": len(test), "named_labels_only": o, "named_with_variants": n,
                  "silent_to_named": round((n - o) / len(test), 4)}
    return out


def _rules(classes, situations: dict):
    from attrx.service.contract.bundle import ConflictSpec, SituationSpec
    from attrx.training.evaluation.family_calibration import _value_rules

    sits = {x: {k: SituationSpec.model_validate(v) for k, v in s.items()} for x, s in situations["situations"].items()}
    conflict = {x: ConflictSpec.model_validate(c) if c else None for x, c in situations["conflict"].items()}
    return _value_rules(classes, sits, conflict, {}, KEY)


def _cells(cs, classes, rules, decoder) -> list[dict]:
    from attrx.service.contract.decisions import decide
    from attrx.service.contract.situations import SITUATIONS

    d = decide(rules, decoder, cs.outputs["probs"], cs.situations, KEY, cs.outputs["text"], cs.outputs["image"])
    out = []
    for j, x in enumerate(classes):
        lab = cs.labels[:, j]
        for k, s in enumerate(SITUATIONS):
            rows = cs.counts[:, j] & (cs.situations[:, j] == k) & (lab >= 0)
            acc = rows & d.accepted[j]
            right = acc & (d.value[j] == lab)
            out.append({"attribute": x, "situation": s, "rows": int(rows.sum()), "accepted": int(acc.sum()),
                        "precision": round(right.sum() / acc.sum(), 4) if acc.any() else None})
    return out


def certify(a) -> dict:
    from attrx.service.contract.constraints import RecordDecoder
    from attrx.training.evaluation.calibration import calibrate_situations
    from attrx.training.evaluation.calibration_set import calibration_set
    from attrx.training.evaluation.constraint_learning import read_constraints

    with tempfile.TemporaryDirectory() as tmp:
        ck, data, words, variants = _load(a.checkpoint, a.catalog, Path(tmp))
        rows = np.concatenate([data.indices("val"), data.indices("test")])
        cs = calibration_set(ck.model, data, rows, ck.tokenizer, words, variants=variants)
    constraints = read_constraints(ck.path)
    decoder = RecordDecoder(ck.classes, constraints)
    splits = {"checkpoint": np.isin(cs.product, data.indices("val"))}
    for seed in a.seeds:
        cal = np.random.default_rng(seed).random(len(data)) < 0.5
        splits[f"seed {seed}"] = cal[cs.product]
    out = {}
    for name, cal in splits.items():
        for rule, delta in (("bound", None), ("certified", 0.1)):
            doc = calibrate_situations(cs.take(cal), ck.classes, constraints, (TARGET,), delta=delta)
            out.setdefault(name, {})[rule] = _cells(cs.take(~cal), ck.classes, _rules(ck.classes, doc), decoder)
    return {"splits": out, "summary": _certify_summary(out)}


def _certify_summary(out: dict) -> dict:
    res = {}
    for rule in ("bound", "certified"):
        cells = [c for s in out.values() for c in s[rule] if c["rows"] >= CELL_MIN]
        judged = [c for c in cells if c["accepted"]]
        misses = [c for c in judged if c["precision"] < TARGET]
        res[rule] = {"cells": len(cells), "cells_accepting": len(judged), "misses": len(misses),
                     "miss_rate": round(len(misses) / len(judged), 4) if judged else None,
                     "coverage": round(sum(c["accepted"] for c in cells) / max(1, sum(c["rows"] for c in cells)), 4),
                     "missed": [f"{c['attribute']}/{c['situation']}: {c['precision']} ({c['accepted']})"
                                for c in misses]}
    return res


def estimate(a) -> dict:
    from attrx.training.evaluation.calibration_set import calibration_set

    with tempfile.TemporaryDirectory() as tmp:
        ck, data, words, variants = _load(a.checkpoint, a.catalog, Path(tmp))
        cs = calibration_set(ck.model, data, data.indices("test"), ck.tokenizer, words, variants=variants)
    nat = cs.copy == 0
    streams = {"as it is": nat, "titles removed": cs.copy == 3, "images removed": cs.copy == 4}
    master = ck.attributes.index("masterCategory") if "masterCategory" in ck.attributes else None
    if master is not None:
        for c, name in enumerate(ck.classes["masterCategory"]):
            rows = nat & (cs.labels[:, master] == c)
            if rows.sum() >= 50:
                streams[f"only {name}"] = rows
    out = {}
    for s, rows in streams.items():
        out[s] = {}
        for j, x in enumerate(ck.attributes):
            lab = cs.labels[rows, j]
            p = cs.outputs["probs"][j][rows][lab != -100]
            y = lab[lab != -100]
            out[s][x] = {"products": int(len(y)), "estimated": round(float(p.max(1).mean()), 4),
                         "realised": round(float((p.argmax(1) == y).mean()), 4)}
            out[s][x]["gap"] = round(out[s][x]["estimated"] - out[s][x]["realised"], 4)
    return out


def compare(a) -> dict:
    out = {}
    for cond in "abcde":
        row = {}
        for tag, ck in zip(("before", "after"), a.evals, strict=True):
            f = Path(ck) / ("metrics.json" if cond == "a" else f"eval/condition-{cond}/metrics.json")
            if not f.is_file():
                continue
            for x, m in json.loads(f.read_text())["attributes"].items():
                if a.attribute and x != a.attribute:
                    continue
                for s, r in m["situations"].items():
                    e = row.setdefault(f"{x} {s}", {})
                    v = r["accepted"][KEY]
                    e[tag] = {"n": r["n"], "precision": v["precision"], "coverage": v["coverage"]}
                    if tag == "after" and "accepted_any" in r:
                        f2 = r["accepted_any"][KEY]
                        e["after, family or value"] = {"precision": f2["precision"], "coverage": f2["coverage"],
                                                       "at_family": f2["at_family"],
                                                       "family_precision": f2["family_precision"]}
        out[cond] = row
    return out


def noise(a) -> dict:
    """Per attribute, over the whole catalog: pairs of products with the very same image bytes, and
    the share of them whose labels differ."""
    import csv
    import hashlib
    from collections import defaultdict
    from itertools import combinations

    cat = Path(a.catalog)
    rows = list(csv.DictReader(open(cat, newline="", encoding="utf-8")))
    groups = defaultdict(list)
    for r in rows:
        f = cat.parent / r["image"] if r.get("image") else None
        if f is not None and f.is_file():
            groups[hashlib.sha256(f.read_bytes()).hexdigest()].append(r)
    attrs = [c for c in rows[0] if c not in ("id", "title", "image")]
    pairs = [(x, y) for g in groups.values() if len(g) > 1 for x, y in combinations(g, 2)]
    out = {"groups": sum(len(g) > 1 for g in groups.values()), "pairs": len(pairs), "attributes": {}}
    for x in attrs:
        both = [(p, q) for p, q in pairs if p[x] and q[x]]
        diff = sum(p[x] != q[x] for p, q in both)
        out["attributes"][x] = {"pairs": len(both), "disagree": diff,
                                "disagree_rate": round(diff / len(both), 4) if both else None}
    return out


def judged(a) -> dict:
    """Accepted precision on the test split against the stored labels, and against the stored labels
    corrected by the judgements (benchmarks/label_rubric.md): an answer is right on a judged product
    when it is the stored label (label right, synonym, unclear) or the judged value (label wrong,
    synonym)."""
    import csv

    scored = {r["id"]: r for r in map(json.loads, Path(a.scored).read_text().splitlines())}
    judgements = {(r["id"], r["attribute"]): r for r in csv.DictReader(open(a.judgements, newline="", encoding="utf-8"))}
    stored = {r["id"]: r for r in csv.DictReader(open(a.catalog, newline="", encoding="utf-8"))}
    out = {}
    for x in sorted({k[1] for k in judgements}):
        acc = [(pid, r[x]) for pid, r in scored.items() if r.get(f"{x}_accepted") and pid in stored and stored[pid][x]]
        raw = sum(v == stored[pid][x] for pid, v in acc)
        fixed = 0
        for pid, v in acc:
            j = judgements.get((pid, x))
            ok = {stored[pid][x]} if j is None or j["verdict"] == "label right" or j["verdict"] == "unclear" else set()
            if j is not None and j["verdict"] in ("label wrong", "synonym"):
                ok |= {j["value"]} | ({stored[pid][x]} if j["verdict"] == "synonym" else set())
            fixed += v in ok
        judged_acc = sum((pid, x) in judgements for pid, _ in acc)
        out[x] = {"accepted": len(acc), "of": sum(1 for pid in scored if pid in stored and stored[pid][x]),
                  "judged_among_accepted": judged_acc,
                  "precision_stored_labels": round(raw / len(acc), 4) if acc else None,
                  "precision_judged_labels": round(fixed / len(acc), 4) if acc else None}
    return out


def dupcheck(a) -> dict:
    """Per attribute: the products of the audited catalog whose exact image bytes appear again with
    another label, and how many of them `attrx audit` flagged (its --out, given as --findings)."""
    import csv
    import hashlib
    from collections import defaultdict

    from attrx.training.data.encode import split_of

    cat = Path(a.catalog)
    rows = list(csv.DictReader(open(cat, newline="", encoding="utf-8")))
    groups = defaultdict(list)
    for r in rows:
        f = Path(r["image"]) if Path(r["image"]).is_absolute() else cat.parent / r["image"]
        groups[hashlib.sha256(f.read_bytes()).hexdigest()].append(r)
    found = {(f["id"], f["attribute"]) for f in map(json.loads, Path(a.findings).read_text().splitlines())}
    out = {}
    for x in {f[1] for f in found}:
        dis = [r for g in groups.values() if len(g) > 1 for r in g if any(o[x] != r[x] for o in g)]
        out[x] = {"products": len(dis), "flagged": sum((r["id"], x) in found for r in dis),
                  "in_training_split": sum(split_of(r["id"], 0.1, 0.1) == "train" for r in dis)}
    return dict(sorted(out.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["matcher", "certify", "estimate", "compare", "render", "noise", "judged",
                                     "dupcheck"])
    ap.add_argument("--checkpoint")
    ap.add_argument("--catalog", default=str(ROOT.parent / "shared" / "data" / "fashion-products" / "catalog.csv"))
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    ap.add_argument("--evals", nargs=2, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--attribute")
    ap.add_argument("--inputs", help="render: the folder of matcher.json, compare.json, certify.json, estimate.json")
    ap.add_argument("--results", default=str(ROOT / "docs" / "RESULTS.md"), help="render: the page to write into")
    ap.add_argument("--scored", help="judged: attrx score's JSONL output for the test split")
    ap.add_argument("--judgements", help="judged: benchmarks/label_judgements.csv")
    ap.add_argument("--findings", help="dupcheck: attrx audit's --out")
    ap.add_argument("--source", default="", help="render: which checkpoints and commands, said in the section")
    ap.add_argument("--kept", default=str(ROOT / "benchmarks" / "trust_inputs"),
                    help="render: kept JSON of the measurements one bench-quality run cannot make (the matcher "
                         "before/after, families, label findings and their judgements, training without suspect "
                         "labels); these take the place of the run's own files of the same name")
    a = ap.parse_args()
    if a.what not in ("compare", "render", "noise", "judged", "dupcheck") and not a.checkpoint:
        ap.error(f"{a.what} needs --checkpoint")
    if a.what == "compare" and not a.evals:
        ap.error("compare needs --evals BEFORE AFTER")
    from trust_render import render

    fns = {"matcher": matcher, "certify": certify, "estimate": estimate, "compare": compare, "render": render,
           "noise": noise, "judged": judged, "dupcheck": dupcheck}
    print(json.dumps(fns[a.what](a), indent=1))


if __name__ == "__main__":
    main()
