"""Contact sheets for judging label findings blind (benchmarks/label_rubric.md).

    python benchmarks/judge_sheets.py --findings findings.jsonl --catalog CATALOG --out DIR [--top 100]

Writes DIR/sheet-NN.png (12 findings each: the image enlarged, the title, the attribute and the
stored label; never attrx's suggestion, probabilities or evidence) and DIR/judgements-template.csv
(id, attribute, stored, verdict, value) in the same order, for a person to fill in.
"""

from __future__ import annotations

import argparse
import csv
import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

COLS, ROWS, SCALE, TEXT_H = 4, 3, 3, 70


def _cell(f: dict, image_path: Path | None, n: int) -> Image.Image:
    w, h = 60 * SCALE + 40, 80 * SCALE + TEXT_H
    cell = Image.new("RGB", (w, h), "white")
    if image_path is not None and image_path.is_file():
        with Image.open(image_path) as im:
            ratio = min(60 * SCALE / im.width, 80 * SCALE / im.height)
            im = im.convert("RGB").resize((max(1, int(im.width * ratio)), max(1, int(im.height * ratio))))
            cell.paste(im, ((w - im.width) // 2, 0))
    d = ImageDraw.Draw(cell)
    lines = [f"#{n} {f['attribute']} = {f['stored']}", *textwrap.wrap(f.get("title") or "(no title)", 34)[:4]]
    for i, line in enumerate(lines):
        d.text((4, 80 * SCALE + 2 + 13 * i), line, fill="black" if i else "darkred")
    return cell


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--findings", required=True)
    ap.add_argument("--catalog", required=True, help="resolves the findings' image paths")
    ap.add_argument("--out", required=True)
    ap.add_argument("--top", type=int, default=100)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    findings = [json.loads(x) for x in Path(a.findings).read_text().splitlines()][: a.top]
    base = Path(a.catalog).resolve().parent
    per = COLS * ROWS
    for s in range(0, len(findings), per):
        cells = [_cell(f, (base / f["image"]) if f.get("image") else None, s + i + 1)
                 for i, f in enumerate(findings[s:s + per])]
        sheet = Image.new("RGB", (cells[0].width * COLS, cells[0].height * ROWS), "white")
        for i, c in enumerate(cells):
            sheet.paste(c, ((i % COLS) * c.width, (i // COLS) * c.height))
        sheet.save(out / f"sheet-{s // per + 1:02d}.png")
    with open(out / "judgements-template.csv", "w", newline="", encoding="utf-8") as g:
        w = csv.writer(g)
        w.writerow(["n", "id", "attribute", "stored", "verdict", "value"])
        for i, f in enumerate(findings, 1):
            w.writerow([i, f["id"], f["attribute"], f["stored"], "", ""])
    print(json.dumps({"sheets": -(-len(findings) // per), "findings": len(findings), "out": str(out)}))


if __name__ == "__main__":
    main()
