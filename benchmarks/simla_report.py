"""SIMLA beside CMA-CLIP on real products, from a benchmarks/quality.py run that trained both:

    python benchmarks/quality.py --only "image-only,cma-clip,simla,simla (pre-trained)" --out build/quality-simla
    python benchmarks/simla_report.py --results build/quality-simla

Prints JSON (the targets of issue 26 and the figures behind them) and, with --markdown, the tables
of docs/results/simla.md: accuracy per attribute in every condition, accepted precision
and coverage per situation at P>=0.90, and the concept head's colour rank-1 (`attrx eval`'s
`concepts`, from the image alone) against the image-only model's colour accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import slug  # noqa: E402  (the checkpoint folders quality.py writes)

CONDITIONS = {"a": "titles as they are", "b": "colour words removed", "c": "image missing", "d": "title missing",
              "e": "every attribute's label words removed"}
SIMLA = ("simla", "simla (pre-trained)")
FAMILIES = ("cma-clip", "momo (pre-trained)", "cma-clip effnet")


def mean_accuracy(res: dict, model: str, cond: str = "a") -> float | None:
    r = res.get(model, {}).get(cond)
    return None if not r else sum(v["accuracy"] for v in r.values()) / len(r)


def concepts(out: Path, model: str) -> dict | None:
    path = out / slug(model) / "metrics.json"
    return json.loads(path.read_text()).get("concepts") if path.is_file() else None


def targets(summary: dict, out: Path) -> dict:
    res = summary["results"]
    best = max((m for m in FAMILIES if m in res), key=lambda m: mean_accuracy(res, m))
    image_colour = res["image-only"]["a"]["baseColour"]["accuracy"] if "image-only" in res else None
    out_t = {"best_family": best, "best_family_mean_accuracy": round(mean_accuracy(res, best), 4)}
    for m in SIMLA:
        if m not in res:
            continue
        mean = mean_accuracy(res, m)
        con = concepts(out, m)
        out_t[m] = {"mean_accuracy": round(mean, 4), "gap_to_best": round(mean_accuracy(res, best) - mean, 4),
                    "within_0.02": mean_accuracy(res, best) - mean <= 0.02,
                    "concept_colour_rank1": None if not con else round(con["rank1"], 4),
                    "concept_products": None if not con else con["products"],
                    "image_only_colour_accuracy": image_colour,
                    "concept_target": None if not con or image_colour is None else round(image_colour - 0.05, 4),
                    "concept_met": None if not con or image_colour is None else con["rank1"] >= image_colour - 0.05}
    return out_t


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def tables(summary: dict) -> list[str]:
    res, attrs = summary["results"], summary["attributes"]
    models = [m for m in ("image-only", "cma-clip", *SIMLA) if m in res]
    lines = []
    for c, name in CONDITIONS.items():
        lines += [f"\n**({c}) {name}**: accuracy\n", "| attribute | " + " | ".join(models) + " |",
                  "|---" * (1 + len(models)) + "|"]
        for a in attrs:
            cells = [_f(res[m][c][a]["accuracy"]) if res[m].get(c) else "-" for m in models]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        means = [_f(mean_accuracy(res, m, c)) for m in models]
        lines.append("| **mean** | " + " | ".join(means) + " |")
    lines += ["\n**Accepted at P>=0.90 per situation** (titles as they are, and title missing): precision "
              "(coverage, products)\n", "| attribute | situation | " + " | ".join(models[1:]) + " |",
              "|---" * (2 + len(models[1:])) + "|"]
    for a in attrs:
        for c in ("a", "d"):
            sits = res["cma-clip"][c][a]["situations"]
            for s in sits:
                cells = []
                for m in models[1:]:
                    x = (res[m][c][a]["situations"].get(s) or {}).get("accepted", {}).get("0.90")
                    cells.append("-" if not x or x["precision"] is None else
                                 f"{x['precision']:.3f} ({x['coverage']:.0%}, {x['of']})")
                lines.append(f"| {a} | {s} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="build/quality-simla", help="the --out folder of benchmarks/quality.py")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    out = Path(a.results)
    if not (out / "results.json").is_file():
        raise SystemExit(f"{out}/results.json not found: run benchmarks/quality.py with the SIMLA rows first "
                         f"(see this script's --help)")
    summary = json.loads((out / "results.json").read_text())
    print(json.dumps({"benchmark": "simla", "results": str(out), "timings": summary.get("timings"),
                      "targets": targets(summary, out)}, indent=2))
    if a.markdown:
        print("\n".join(tables(summary)))


if __name__ == "__main__":
    main()
