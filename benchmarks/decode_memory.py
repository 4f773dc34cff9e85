"""Peak memory of decoding the worst image the limits allow (docs/security.md): for each format attrx
decodes, an image as large as the pixel limit lets through (and small enough on the wire to pass the
body limit: one flat colour compresses to almost nothing, which is what makes it a bomb), decoded by
attrx's own path (open_image + image_to_array, as a front-end's decoding thread runs it) in a fresh
process. The peak resident memory (VmHWM, reset just before) above the process's level then is the figure. Each case runs
`--repeats` times, alternating cases, at the default limit and, side by side, at the former 40 MP.

    python benchmarks/decode_memory.py [--repeats 3]        prints JSON
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import sys, time
from pathlib import Path
from attrx.service.contract.preprocess import PreprocessConfig, image_to_array, open_image

def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

path, limit = sys.argv[1], int(sys.argv[2])
cfg = PreprocessConfig(max_image_pixels=limit)
data = Path(path).read_bytes()
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
before = status_kb("VmRSS")
t0 = time.perf_counter()
arr = image_to_array(open_image(data, cfg), cfg)
took = time.perf_counter() - t0
print(max(0, status_kb("VmHWM") - before) / 1024, took)
"""


def side(limit: int) -> tuple[int, int]:
    """The largest near-square image under `limit` pixels, its longer side a multiple of 16."""
    w = int(limit ** 0.5) // 16 * 16
    return w, limit // w


def make_images(folder: Path, limit: int) -> dict[str, Path]:
    from PIL import Image

    w, h = side(limit)
    out = {}
    cases = {
        "png-rgba": lambda: Image.new("RGBA", (w, h), (200, 30, 30, 128)).save(f := io.BytesIO(), "PNG") or f,
        "png-16bit-grey": lambda: Image.new("I;16", (w, h), 40000).save(f := io.BytesIO(), "PNG") or f,
        "png-palette-transparent": lambda: _palette(Image, w, h),
        "jpeg-progressive": lambda: Image.new("RGB", (w, h), (30, 90, 200)).save(
            f := io.BytesIO(), "JPEG", progressive=True, quality=90) or f,
        "webp-lossless-alpha": lambda: Image.new("RGBA", (w, h), (30, 200, 90, 100)).save(
            f := io.BytesIO(), "WEBP", lossless=True) or f,
        "gif": lambda: Image.new("P", (w, h), 3).save(f := io.BytesIO(), "GIF") or f,
    }
    for name, make in cases.items():
        p = folder / f"{name}-{limit}.img"
        p.write_bytes(make().getvalue())
        out[name] = p
    return out


def _palette(Image, w: int, h: int):
    img = Image.new("P", (w, h), 1)
    f = io.BytesIO()
    img.save(f, "PNG", transparency=1)
    return f


def measure(path: Path, limit: int) -> tuple[float, float]:
    r = subprocess.run([sys.executable, "-c", CHILD, str(path), str(limit)], capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"{path.name}: {r.stderr[-1500:]}")
    mb, seconds = r.stdout.split()
    return float(mb), float(seconds)


def main() -> None:
    from attrx.service.settings import ServeSettings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    limits = {"default": ServeSettings.model_fields["max_image_pixels"].default, "former": 40_000_000}
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = {k: make_images(Path(tmp), v) for k, v in limits.items()}
        for rep in range(a.repeats):
            for name in images["default"]:
                for which, limit in limits.items():  # alternating: the two limits side by side
                    mb, s = measure(images[which][name], limit)
                    r = results.setdefault(name, {}).setdefault(which, {"mb": [], "s": [], "bytes": 0})
                    r["mb"].append(round(mb, 1))
                    r["s"].append(round(s, 3))
                    r["bytes"] = images[which][name].stat().st_size
            print(f"repeat {rep + 1}/{a.repeats} done", file=sys.stderr, flush=True)
    report = {"limits": {k: {"pixels": v, "size": "x".join(map(str, side(v)))} for k, v in limits.items()},
              "repeats": a.repeats, "cases": {}}
    for name, by in results.items():
        case = {w: {"peak_mb_median": statistics.median(r["mb"]), "peak_mb_spread": [min(r["mb"]), max(r["mb"])],
                    "seconds_median": statistics.median(r["s"]), "file_bytes": r["bytes"]} for w, r in by.items()}
        case["ratio_default_to_former"] = round(case["default"]["peak_mb_median"] /
                                                max(case["former"]["peak_mb_median"], 1e-9), 2)
        report["cases"][name] = case
    report["worst_default_mb"] = max(c["default"]["peak_mb_median"] for c in report["cases"].values())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
