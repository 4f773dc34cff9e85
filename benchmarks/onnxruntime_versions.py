"""fp16 and int8 export across every onnxruntime minor release that pyproject.toml allows.

The precision variants are converted by onnxruntime's own tools (`onnxruntime.transformers.float16`,
`onnxruntime.quantization`), so a new onnxruntime can break them (1.30.0's float16 converter writes
duplicate nodes). This script:

1. trains a tiny demo model (or takes `--checkpoint`), exports its fp32 graph and encodes its test
   split once, with the onnxruntime of this environment;
2. for each release (default: the lowest version the requirement allows, and the newest patch of
   every later minor on the index), installs that onnxruntime alone into `--work/site-<version>`
   (`pip install --no-deps --target`) and, in a child process that imports it first, converts the
   fp32 graph to fp16 and int8 with attrx's export code and checks each against its gate, as
   `attrx export` does; it also records whether the converter's raw fp16 output loads at all,
   which shows what attrx's own clean-up is for.

Prints one JSON document (and writes it to `--out`):
    python benchmarks/onnxruntime_versions.py [--versions 1.23.0,1.30.0] [--find-links DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def requirement() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in deps if re.match(r"onnxruntime\b", d)).split("#")[0].strip()


def releases(spec: str) -> list[str]:
    """The lowest allowed version and the newest patch of every allowed minor, from the index."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "onnxruntime"],
                         capture_output=True, text=True, check=True).stdout
    listed = re.search(r"Available versions:\s*(.*)", out).group(1).split(", ")
    allowed = SpecifierSet(spec.removeprefix("onnxruntime"))
    versions = sorted(Version(v) for v in listed if Version(v) in allowed and not Version(v).is_prerelease)
    newest = {}
    for v in versions:
        newest[(v.major, v.minor)] = v
    return [str(v) for v in sorted({versions[0], *newest.values()})]


def prepare(work: Path, checkpoint: str | None, catalog: str | None) -> None:
    """fp32 graph, encoded test split and the fp32 reference outputs, written to `work`."""
    import numpy as np

    from attrx.export.build import eval_set
    from attrx.export.onnx_export import export_onnx
    from attrx.training.models.checkpoint import load_checkpoint

    if checkpoint is None:
        checkpoint = str(train_tiny(work))
    ck = load_checkpoint(checkpoint)
    pre = ck.preprocess
    outputs = export_onnx(ck.model, ck.attributes, work / "model.onnx", max_len=pre.max_text_len,
                          image_size=pre.image_size)
    ev = eval_set(ck, catalog)
    np.savez(work / "eval.npz", labels=ev.labels, **ev.inputs)
    (work / "eval.json").write_text(json.dumps({"attributes": ev.attributes, "source": ev.source,
                                                "outputs": outputs}))


def train_tiny(work: Path) -> Path:
    from attrx.training.data.demo import write_demo_catalog
    from attrx.training.train import TrainConfig, train

    catalog = write_demo_catalog(work / "demo", n=600, seed=3, progress=False)
    cfg = TrainConfig(catalog=str(catalog), attributes=["category", "colour", "pattern", "gender"],
                      out=str(work / "checkpoint"), config="tiny", warmup_epochs=1, e2e_epochs=3, tune_epochs=1,
                      batch_size=32, progress=False)
    train(cfg)
    return work / "checkpoint"


def install(version: str, work: Path, find_links: str | None) -> Path:
    site = work / f"site-{version}"
    if not (site / "onnxruntime").is_dir():
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
               f"onnxruntime=={version}"]
        if find_links:
            cmd += ["--find-links", find_links]
        subprocess.run(cmd, check=True)
    return site


def worker(work: Path) -> dict:
    """In the child: this onnxruntime converts and checks fp16 and int8 as `attrx export` does."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from attrx.export import precision

    meta = json.loads((work / "eval.json").read_text())
    arrays = dict(np.load(work / "eval.npz"))
    labels = arrays.pop("labels")
    ev = precision.EvalSet(arrays, labels, meta["attributes"], meta["source"])
    fp32 = work / "model.onnx"
    ref = precision.run_session(precision.session(fp32), ev.inputs, meta["outputs"])
    result = {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "from": ort.__file__}
    raw = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True, op_block_list=precision.FP16_KEEP_FP32)
    try:
        ort.InferenceSession(raw.SerializeToString(), providers=["CPUExecutionProvider"])
        result["raw_fp16_loads"] = True
    except Exception as e:  # noqa: BLE001 - what this onnxruntime says of its own converter's output
        result["raw_fp16_loads"] = False
        result["raw_fp16_error"] = str(e).splitlines()[0][-200:]
    for prec in ("fp16", "int8"):
        dst = work / f"out-{ort.__version__}.{prec}.onnx"
        outcome = precision.make_variant(prec, fp32, dst, meta["outputs"], ev, ref)
        worst = min((r["agreement"] for r in outcome.report["attributes"].values()), default=None)
        result[prec] = {"accepted": outcome.accepted, "attempt": outcome.attempt, "min_agreement": worst,
                        "reasons": outcome.reasons}
        dst.unlink(missing_ok=True)
    return result


def run_one(version: str, work: Path, find_links: str | None) -> dict:
    site = install(version, work, find_links)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    t0 = time.time()
    p = subprocess.run([sys.executable, __file__, "--worker", str(work)], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        return {"onnxruntime": version, "error": p.stderr.strip().splitlines()[-1:] or [f"exit {p.returncode}"]}
    result = json.loads(p.stdout.strip().splitlines()[-1])
    if result["onnxruntime"] != version or str(site) not in result["from"]:
        result["error"] = f"the child imported onnxruntime {result['onnxruntime']} from {result['from']}"
    result["seconds"] = round(time.time() - t0, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", help="comma-separated releases (default: every allowed minor)")
    ap.add_argument("--checkpoint", help="a checkpoint to export (default: train a tiny demo model)")
    ap.add_argument("--catalog", help="the checkpoint's catalog, where it is not at the path it recorded")
    ap.add_argument("--work", default="build/onnxruntime-versions")
    ap.add_argument("--out", default="build/onnxruntime-versions.json")
    ap.add_argument("--find-links", help="a folder of onnxruntime wheels to install from first")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(Path(args.worker))))
        return 0
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    spec = requirement()
    versions = args.versions.split(",") if args.versions else releases(spec)
    print(f"onnxruntime_versions: {spec}: {', '.join(versions)}", file=sys.stderr)
    if not (work / "eval.json").is_file():
        prepare(work, args.checkpoint, args.catalog)
    rows = []
    for v in versions:
        rows.append(run_one(v, work, args.find_links))
        r = rows[-1]
        print(f"  {v}: " + (f"error {r['error']}" if "error" in r else
                            f"raw fp16 loads {r['raw_fp16_loads']}, fp16 {r['fp16']['accepted']}, "
                            f"int8 {r['int8']['accepted']}"), file=sys.stderr)
    doc = {"requirement": spec, "versions": rows,
           "all_pass": all("error" not in r and r["fp16"]["accepted"] and r["int8"]["accepted"] for r in rows)}
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))
    return 0 if doc["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
