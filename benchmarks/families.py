"""Model families and variants on the demo catalog, with the same fine-tuning budget.

    python benchmarks/families.py --catalog build/demo/data/catalog.csv --out build/families

Trains, evaluates and exports: CMA-CLIP, CMA-CLIP --no-mwa, --no-swa, --fusion tirg, MoMo and
SIMLA without pre-training, and MoMo and SIMLA pre-trained (attrx pretrain on the training split,
as many steps each: MoMo's three stages of --pretrain-steps, SIMLA's one stage of three times that)
then fine-tuned. Every model gets the same `attrx train` epochs, learning rates, batch size and
modality dropout. SIMLA's rows add the concept head's colour rank-1 (from the image alone, the
true colour first among all the catalog's colour words).
Prints JSON (parameters, training time, per-attribute accuracy and recall@0.90, onnxruntime
items/s at batch 32); --markdown also prints the table in docs/results/. Takes ~10 minutes on 2 cores:
run it in the background with its output in a file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ATTRS = "category,colour,pattern,gender"
BUDGET = ["--warmup-epochs", "2", "--e2e-epochs", "40", "--e2e-lr", "1e-3", "--tune-epochs", "2",
          "--modality-dropout", "0.4", "--batch-size", "32", "--quiet"]
MODELS = {
    "cma-clip": [],
    "cma-clip --no-mwa": ["--no-mwa"],
    "cma-clip --no-swa": ["--no-swa"],
    "cma-clip --fusion tirg": ["--fusion", "tirg"],
    "momo (no pre-training)": ["--family", "momo"],
    "momo (pre-trained)": ["--family", "momo", "--init-from", "{pretrained}"],
    "simla (no pre-training)": ["--family", "simla"],
    "simla (pre-trained)": ["--family", "simla", "--init-from", "{simla_pretrained}"],
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def attrx(*args: str) -> float:
    exe = str(Path(sys.executable).parent / "attrx")
    t0 = time.time()
    r = subprocess.run([exe, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"attrx {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return time.time() - t0


def ort_items_per_s(bundle_dir: Path, catalog: str, seconds: float = 3.0) -> float:
    from attrx.service.catalog.reader import read_catalog
    from attrx.service.contract.bundle import load_bundle
    from attrx.service.inference.predictor import Predictor
    from attrx.service.inference.runtime import load_backend

    b = load_bundle(bundle_dir)
    pred = Predictor(b, backend=load_backend(b))
    prods = [p for p in read_catalog(catalog).products if p.title and p.image][:32]
    feeds = pred.batch([pred.decode_request(p.title, p.image).inputs for p in prods])
    pred.predict(feeds)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pred.predict(feeds)
        n += len(prods)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default="build/demo/data/catalog.csv")
    ap.add_argument("--out", default="build/families")
    ap.add_argument("--pretrain-steps", type=int, default=300, help="steps per MoMo pre-training stage")
    ap.add_argument("--only", help="comma-separated model names to run (default: all)")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    if not Path(a.catalog).is_file():
        raise SystemExit(f"{a.catalog} not found: run `make demo-bundle` (or attrx demo-data) first")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors import safe_open

    pre_dir = out / "momo-pretrained"
    models = {k: v for k, v in MODELS.items() if not a.only or k in a.only.split(",")}
    pre_seconds = _pretrain(a, models, pre_dir, out / "simla-pretrained")
    rows = []
    for name, flags in models.items():
        slug = name.replace(" ", "_").replace("(", "").replace(")", "").replace("--", "")
        ck, bundle = out / slug, out / f"{slug}-bundle"
        flags = [f.replace("{pretrained}", str(pre_dir)).replace("{simla_pretrained}", str(out / "simla-pretrained"))
                 for f in flags]
        log(f"{name}: training...")
        secs = attrx("train", a.catalog, "--attributes", ATTRS, "--out", str(ck), *flags, *BUDGET)
        attrx("eval", "--checkpoint", str(ck), a.catalog, "--quiet")
        attrx("export", "--checkpoint", str(ck), "--out", str(bundle), "--name", slug)
        with safe_open(str(ck / "model.safetensors"), "pt") as f:
            params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
        m = json.loads((ck / "metrics.json").read_text())["attributes"]
        row = {
            "model": name, "params_m": round(params / 1e6, 3), "train_seconds": round(secs, 1),
            "pretrain_seconds": pre_seconds.get(name.split()[0]) if "pre-trained" in name else None,
            "onnxruntime_items_per_s_b32": round(ort_items_per_s(bundle, a.catalog), 1),
            "attributes": {k: {"accuracy": round(v["accuracy"], 4),
                               "recall_at_p90": v["recall_at_precision"]["0.90"]["macro_recall"],
                               "accuracy_title_lacks_label": round(v["accuracy_title_lacks_label"], 4),
                               "mean_image_weight": round(v["mean_image_weight"], 3)} for k, v in m.items()},
        }
        concepts = json.loads((ck / "metrics.json").read_text()).get("concepts")
        if concepts:
            row["concept_colour_rank1"] = round(concepts["rank1"], 4)
        rows.append(row)
        accs = " ".join(f"{k}={v['accuracy']:.3f}" for k, v in row["attributes"].items())
        log(f"{name}: {row['params_m']}M params, {secs:.0f}s, {accs}, {row['onnxruntime_items_per_s_b32']:.0f} items/s")
    result = {"benchmark": "families", "catalog": a.catalog, "budget": " ".join(BUDGET), "models": rows}
    print(json.dumps(result, indent=2))
    if a.markdown:
        attrs = ATTRS.split(",")
        print("\n| model | params | train s | " + " | ".join(f"{x} acc / R@P.90" for x in attrs)
              + " | colour acc, title lacks colour | ORT items/s | concept colour rank-1 |")
        print("|---" * (6 + len(attrs)) + "|")
        for r in rows:
            t = f"{r['train_seconds']:.0f}" + (f" (+{r['pretrain_seconds']:.0f} pre-training)" if r["pretrain_seconds"] else "")
            cells = []
            for x in attrs:
                v = r["attributes"][x]
                rap = v["recall_at_p90"]
                cells.append(f"{v['accuracy']:.3f} / {rap if isinstance(rap, str) else f'{rap:.3f}'}")
            print(f"| {r['model']} | {r['params_m']:.2f}M | {t} | " + " | ".join(cells)
                  + f" | {r['attributes']['colour']['accuracy_title_lacks_label']:.3f} | {r['onnxruntime_items_per_s_b32']:.0f} | "
                  + (f"{r['concept_colour_rank1']:.3f} |" if "concept_colour_rank1" in r else "- |"))


def _pretrain(a, models: dict, momo_dir: Path, simla_dir: Path) -> dict[str, float]:
    """Pre-train each family a row asks for, on the training split: {family: seconds}."""
    wanted = " ".join(" ".join(v) for v in models.values())
    n, seconds = a.pretrain_steps, {}
    if "{pretrained}" in wanted:
        log(f"pre-training MoMo ({n} steps per stage, training split only)...")
        seconds["momo"] = round(attrx("pretrain", a.catalog, "--out", str(momo_dir), "--split", "train",
                                      "--stage1-steps", str(n), "--stage2-steps", str(n), "--stage3-steps", str(n),
                                      "--quiet"), 1)
    if "{simla_pretrained}" in wanted:
        log(f"pre-training SIMLA ({3 * n} steps, training split only)...")
        seconds["simla"] = round(attrx("pretrain", "--family", "simla", a.catalog, "--out", str(simla_dir),
                                       "--split", "train", "--steps", str(3 * n), "--quiet"), 1)
    return seconds


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


if __name__ == "__main__":
    main()
