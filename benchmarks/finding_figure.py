"""docs/figures/label-finding.png: one label finding of `attrx audit`, with its evidence, on the
built-in demo catalog (its images are attrx's own, so the picture may live in the repository).

    python benchmarks/finding_figure.py --bundle build/demo-bundle --catalog build/demo/data/catalog.csv

Copies the catalog's first 200 rows, gives one product a wrong colour and another the same image
bytes under a new id with yet another colour, runs `attrx audit`, and draws the strongest colour
finding: the image, the title, the stored label, and the evidence the audit gives.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent


def _catalog(src: Path, out: Path) -> None:
    rows = list(csv.DictReader(open(src, newline="", encoding="utf-8")))[:200]
    for r in rows:
        r["image"] = str(src.parent / r["image"]) if r["image"] else ""
    colours = sorted({r["colour"] for r in rows})
    wrong = next(c for c in colours if c != rows[3]["colour"])
    dup = dict(rows[3], id=rows[3]["id"] + "-copy", colour=next(c for c in colours if c not in (wrong, rows[3]["colour"])))
    rows[3] = dict(rows[3], colour=wrong)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([*rows, dup])


def _draw(f: dict, path: Path) -> None:
    with Image.open(f["image"]) as im:
        im = im.convert("RGB").resize((192, 192))
    fig = Image.new("RGB", (720, 230), "white")
    fig.paste(im, (16, 19))
    d = ImageDraw.Draw(fig)
    ev = f["evidence"]

    def top(xs):
        return ", ".join(f"{x['value']} {x['probability']:.2f}" for x in xs[:2])

    lines = [f"{f['id']}: {f['title']}", f"catalog says {f['attribute']} = {f['stored']}  (model: {f['p_stored']:.3f})",
             f"suggested: {f['suggested']}   strength {f['strength']:.2f}",
             f"title names: {', '.join(ev['title_names']) or 'no colour'}",
             f"title alone: {top(ev.get('title_only', []))}", f"image alone: {top(ev.get('image_only', []))}",
             "same image elsewhere: " + (", ".join(f"{x['id']} ({x['kind']}) says {x['label']}"
                                                   for x in ev["duplicates"]) or "none")]
    y = 20
    for i, line in enumerate(lines):
        for part in textwrap.wrap(line, 70):
            d.text((226, y), part, fill="darkred" if i == 1 else "black")
            y += 16
        y += 8
    fig.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "build" / "demo-bundle"))
    ap.add_argument("--catalog", default=str(ROOT / "build" / "demo" / "data" / "catalog.csv"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures" / "label-finding.png"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cat, found = Path(tmp) / "catalog.csv", Path(tmp) / "findings.jsonl"
        _catalog(Path(a.catalog), cat)
        subprocess.run([sys.executable, "-m", "attrx", "audit", str(cat), "--bundle", a.bundle, "--out", str(found),
                        "--attributes", "colour"], check=True, capture_output=True)
        findings = [json.loads(x) for x in found.read_text().splitlines()]
        if not findings:
            raise SystemExit("no colour finding: nothing to draw")
        _draw(findings[0], Path(a.out))
    print(json.dumps({"written": a.out, "finding": {k: findings[0][k] for k in ("id", "stored", "suggested", "strength")}}))


if __name__ == "__main__":
    main()
