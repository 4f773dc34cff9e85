"""A synthetic, deterministic demo catalog: `catalog.csv` + `images/`.

Attributes: category (7 shapes), colour (12 named colours), pattern (5), gender (3).
Images are drawn with Pillow: a garment/accessory silhouette filled with its colour and pattern,
on a muted random background, with colour jitter, rotation, noise and JPEG compression.

Titles are templated and, like real catalogs, often leave attributes out (the probabilities are
in `TITLE_PROBABILITIES` and written to `demo_config.json`). Gender is carried by the title only:
the image has no gender signal. Two brand names contain a colour word that says nothing about the
product ("Red Tape", "Blue Harbour"). So a model must read colour and pattern from the image for
most products, which is what the modality-wise attention is for.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

ATTRIBUTES = ("category", "colour", "pattern", "gender")

COLOURS = {
    "black": (28, 28, 30),
    "white": (242, 242, 240),
    "grey": (128, 128, 132),
    "red": (200, 32, 38),
    "green": (40, 150, 62),
    "blue": (38, 82, 205),
    "yellow": (240, 210, 40),
    "orange": (242, 128, 30),
    "purple": (122, 50, 165),
    "pink": (242, 140, 182),
    "brown": (118, 74, 40),
    "teal": (18, 140, 140),
}
PATTERNS = ("solid", "striped", "checked", "dotted", "colourblock")
GENDERS = ("men", "women", "unisex")

# Silhouettes as polygons in unit coordinates (x right, y down).
SHAPES: dict[str, list[list[tuple[float, float]]]] = {
    "tshirt": [[(0.30, 0.15), (0.42, 0.12), (0.50, 0.18), (0.58, 0.12), (0.70, 0.15), (0.92, 0.32),
                (0.82, 0.45), (0.72, 0.38), (0.72, 0.88), (0.28, 0.88), (0.28, 0.38), (0.18, 0.45),
                (0.08, 0.32)]],
    "dress": [[(0.40, 0.08), (0.60, 0.08), (0.62, 0.22), (0.58, 0.40), (0.85, 0.92), (0.15, 0.92),
               (0.42, 0.40), (0.38, 0.22)]],
    "trousers": [[(0.30, 0.08), (0.70, 0.08), (0.76, 0.92), (0.56, 0.92), (0.50, 0.35), (0.44, 0.92),
                  (0.24, 0.92)]],
    "skirt": [[(0.34, 0.25), (0.66, 0.25), (0.88, 0.78), (0.12, 0.78)]],
    "handbag": [[(0.18, 0.40), (0.82, 0.40), (0.88, 0.88), (0.12, 0.88)],
                [(0.32, 0.40), (0.36, 0.16), (0.64, 0.16), (0.68, 0.40), (0.60, 0.40), (0.57, 0.24),
                 (0.43, 0.24), (0.40, 0.40)]],
    "sneaker": [[(0.08, 0.50), (0.36, 0.46), (0.52, 0.32), (0.66, 0.34), (0.92, 0.62), (0.92, 0.76),
                 (0.08, 0.76)]],
    "cap": [[(0.22, 0.62), (0.26, 0.40), (0.38, 0.28), (0.50, 0.25), (0.62, 0.28), (0.74, 0.40),
             (0.78, 0.62)],
            [(0.60, 0.56), (0.95, 0.60), (0.95, 0.68), (0.60, 0.68)]],
}
CATEGORIES = tuple(SHAPES)

BRANDS = ("Roadster", "Urbano", "Nimbus", "Kaveri", "Northline", "Moda Vista", "Solstice", "Peak & Pine",
          "Velora", "Trailhead", "Red Tape", "Blue Harbour")
CATEGORY_WORDS = {
    "tshirt": ("T-Shirt", "Tee", "Crew Neck T-Shirt", "Polo T-Shirt"),
    "dress": ("Dress", "Midi Dress", "A-Line Dress", "Maxi Dress"),
    "trousers": ("Trousers", "Chinos", "Pants", "Joggers"),
    "skirt": ("Skirt", "Mini Skirt", "Pleated Skirt"),
    "handbag": ("Handbag", "Tote Bag", "Shoulder Bag"),
    "sneaker": ("Sneakers", "Trainers", "Running Shoes"),
    "cap": ("Cap", "Baseball Cap", "Snapback"),
}
GENERIC_WORDS = ("Essential", "Piece", "Must-Have", "Staple", "Pick")
PATTERN_WORDS = {
    "solid": ("Solid", "Plain"),
    "striped": ("Striped", "Stripe"),
    "checked": ("Checked", "Check", "Plaid"),
    "dotted": ("Polka Dot", "Dotted"),
    "colourblock": ("Colourblock", "Colour-Block"),
}
GENDER_WORDS = {"men": ("Men", "Men's", "for Men"), "women": ("Women", "Women's", "for Women"),
                "unisex": ("Unisex",)}
FILLERS = ("Regular Fit", "Slim Fit", "Cotton", "Casual", "Everyday", "Premium", "Classic", "Summer Edit",
           "Organic", "Lightweight", "New Season", "Relaxed")

TITLE_PROBABILITIES = {
    "colour_word_in_title": 0.50,
    "pattern_word_in_title": 0.25,
    "category_word_in_title": 0.85,
    "gender_word_in_title": 1.00,
    "filler_in_title": 0.60,
    "no_title": 0.02,
    "no_image": 0.02,
}


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _title(rng, category, colour, pattern, gender) -> str:
    p = TITLE_PROBABILITIES
    gword = _pick(rng, GENDER_WORDS[gender])
    words = [_pick(rng, BRANDS)]
    if not gword.startswith("for "):
        words.append(gword)
    if rng.random() < p["colour_word_in_title"]:
        words.append(colour.capitalize())
    if rng.random() < p["pattern_word_in_title"]:
        words.append(_pick(rng, PATTERN_WORDS[pattern]))
    if rng.random() < p["filler_in_title"]:
        words.append(_pick(rng, FILLERS))
    words.append(_pick(rng, CATEGORY_WORDS[category]) if rng.random() < p["category_word_in_title"]
                 else _pick(rng, GENERIC_WORDS))
    if gword.startswith("for "):
        words.append(gword)
    return " ".join(words)


def _shade(rgb, pattern_rng) -> tuple[int, int, int]:
    """The secondary colour of a pattern: a clearly darker or lighter shade of the base colour."""
    lum = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255
    if lum > 0.55:
        f = pattern_rng.uniform(0.45, 0.6)
        return tuple(int(c * f) for c in rgb)
    f = pattern_rng.uniform(0.45, 0.6)
    return tuple(int(c + (255 - c) * f) for c in rgb)


def _texture(size, base, second, pattern, rng) -> Image.Image:
    tex = Image.new("RGB", (size, size), base)
    d = ImageDraw.Draw(tex)
    period = int(rng.integers(11, 16))
    width = max(3, period // 2 - int(rng.integers(0, 2)))
    off = int(rng.integers(0, period))
    if pattern == "striped":
        if rng.random() < 0.5:
            for y in range(-period + off, size, period):
                d.rectangle([0, y, size, y + width - 1], fill=second)
        else:
            for x in range(-period + off, size, period):
                d.rectangle([x, 0, x + width - 1, size], fill=second)
    elif pattern == "checked":
        arr = np.asarray(tex).copy()
        idx = (np.arange(size) + off) // (period // 2 + 3)
        checker = (idx[:, None] + idx[None, :]) % 2 == 1
        arr[checker] = second
        tex = Image.fromarray(arr)
    elif pattern == "dotted":
        r = rng.uniform(2.0, 3.0)
        step = period - 2
        for yi, y in enumerate(range(off % step, size, step)):
            for x in range(off % step + (step // 2 if yi % 2 else 0), size, step):
                d.ellipse([x - r, y - r, x + r, y + r], fill=second)
    elif pattern == "colourblock":
        split = rng.uniform(0.35, 0.65) * size
        if rng.random() < 0.5:
            d.rectangle([0, split, size, size], fill=second)
        else:
            d.rectangle([split, 0, size, size], fill=second)
    return tex


def draw_product(rng: np.random.Generator, category: str, colour: str, pattern: str, size: int = 96) -> Image.Image:
    # muted background with a gradient and a few faint distractor strokes
    h, s = rng.random(), rng.uniform(0.0, 0.18)
    v = rng.uniform(0.62, 0.88)
    bg = np.array(_hsv_to_rgb(h, s, v), dtype=np.float32)
    grad = np.linspace(-1, 1, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    g = (np.cos(angle) * grad[None, :] + np.sin(angle) * grad[:, None])[..., None] * rng.uniform(5, 20)
    canvas = np.clip(bg[None, None, :] + g, 0, 255).astype(np.uint8)
    img = Image.fromarray(canvas)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 3))):
        pts = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
        shade = tuple(int(c) for c in np.clip(bg + rng.uniform(-30, 30), 0, 255))
        d.line(pts, fill=shade, width=int(rng.integers(1, 3)))

    # silhouette mask, with position/scale jitter
    scale = rng.uniform(0.82, 1.0) * size
    ox = (size - scale) / 2 + rng.uniform(-0.05, 0.05) * size
    oy = (size - scale) / 2 + rng.uniform(-0.05, 0.05) * size
    mask = Image.new("L", (size, size), 0)
    md = ImageDraw.Draw(mask)
    outline = Image.new("L", (size, size), 0)
    od = ImageDraw.Draw(outline)
    for poly in SHAPES[category]:
        pts = [(ox + x * scale, oy + y * scale) for x, y in poly]
        md.polygon(pts, fill=255)
        od.polygon(pts, outline=255, width=1)

    base = np.array(COLOURS[colour], dtype=np.float32)
    base = base * rng.uniform(0.88, 1.1) + rng.uniform(-12, 12, 3)
    base_rgb = tuple(int(c) for c in np.clip(base, 0, 255))
    tex = _texture(size, base_rgb, _shade(base_rgb, rng), pattern, rng)
    img.paste(tex, (0, 0), mask)
    dark = Image.new("RGB", (size, size), tuple(int(c * 0.5) for c in base_rgb))
    img.paste(dark, (0, 0), outline)

    img = img.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BILINEAR,
                     fillcolor=tuple(int(c) for c in bg))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 5, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _hsv_to_rgb(h, s, v):
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (r * 255, g * 255, b * 255)


def make_item(seed: int, i: int) -> dict:
    """One product, deterministic for (seed, i)."""
    rng = np.random.default_rng([seed, i])
    category = _pick(rng, CATEGORIES)
    colour = _pick(rng, tuple(COLOURS))
    pattern = _pick(rng, PATTERNS)
    if category in ("dress", "skirt"):
        gender = "women" if rng.random() < 0.9 else "unisex"
    else:
        gender = _pick(rng, GENDERS)
    title = _title(rng, category, colour, pattern, gender)
    u = rng.random()
    has_title = u >= TITLE_PROBABILITIES["no_title"]
    has_image = not (TITLE_PROBABILITIES["no_title"] <= u < TITLE_PROBABILITIES["no_title"] + TITLE_PROBABILITIES["no_image"])
    image = draw_product(rng, category, colour, pattern) if has_image else None
    return {
        "id": f"demo{seed}-{i:06d}",
        "title": title if has_title else "",
        "image": image,
        "category": category,
        "colour": colour,
        "pattern": pattern,
        "gender": gender,
    }


def write_demo_catalog(out: str | Path, n: int = 3000, seed: int = 0, progress: bool = True) -> Path:
    """Write `catalog.csv`, `images/*.jpg` and `demo_config.json` under `out`; returns the CSV path."""
    if n < 1:
        raise ValueError("n must be >= 1")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / "catalog.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "image", *ATTRIBUTES])
        for i in tqdm(range(n), desc="demo catalog", unit="item", disable=None if progress else True):
            item = make_item(seed, i)
            rel = ""
            if item["image"] is not None:
                rel = f"images/{item['id']}.jpg"
                item["image"].save(out / rel, format="JPEG", quality=90)
            w.writerow([item["id"], item["title"], rel, *(item[a] for a in ATTRIBUTES)])
    (out / "demo_config.json").write_text(json.dumps({
        "n": n, "seed": seed, "attributes": {
            "category": list(CATEGORIES), "colour": list(COLOURS), "pattern": list(PATTERNS),
            "gender": list(GENDERS)},
        "title_probabilities": TITLE_PROBABILITIES,
        "colour_word_brands": ["Red Tape", "Blue Harbour"],
    }, indent=2))
    return path
