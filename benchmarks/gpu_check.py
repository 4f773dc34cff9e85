"""`make gpu-check`: attrx's GPU paths in one go on any CUDA machine, one JSON report.

GPU machines often have torch and CUDA but no internet: this runs from the repository and the
packages already there. It installs nothing; where attrx is not installed it puts the repository's
folders on the path under the `attrx` name (build/gpu-check/path/) and runs `python -m attrx`.
Each step says what it skipped and why. Steps (about 5 minutes on one H100/H200):

1. environment: torch, CUDA, the GPU, onnxruntime and its providers, TensorRT's lean runtime;
2. `attrx train --device cuda` at bf16 and at fp16 (GradScaler) on a small demo catalog;
3. the same under `torchrun --nproc-per-node 1` (nccl);
4. `attrx export --variants fp32,fp16` of the bf16 checkpoint: is fp16 accepted;
5. benchmarks/training.py --device cuda: model alone vs the training loop, GPU utilisation;
6. onnxruntime-gpu serving (`attrx serve --providers cuda`) where its CUDA provider is listed.

    python benchmarks/gpu_check.py [--out build/gpu-check] [--skip benchmark]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ATTRS = "category,colour,pattern,gender"
FAST = ["--config", "tiny", "--warmup-epochs", "1", "--e2e-epochs", "6", "--e2e-lr", "2e-3", "--tune-epochs", "0",
        "--batch-size", "64", "--quiet"]


def log(msg: str) -> None:
    print(f"gpu-check: {msg}", file=sys.stderr, flush=True)


def attrx_env(out: Path) -> dict:
    """The environment child processes run attrx in: the installed one, or the repository's folders
    linked under the attrx name."""
    env = dict(os.environ)
    if importlib.util.find_spec("attrx.training") is not None:
        return env
    link = out / "path" / "attrx"
    link.mkdir(parents=True, exist_ok=True)
    for name, target in (("__main__.py", ROOT / "attrx" / "__main__.py"), ("version.py", ROOT / "attrx" / "version.py"),
                         ("cli", ROOT / "attrx" / "cli"), ("service", ROOT / "service"),
                         ("training", ROOT / "training"), ("export", ROOT / "export")):
        if not (link / name).exists():
            (link / name).symlink_to(target)
    env["PYTHONPATH"] = os.pathsep.join([str(link.parent), env.get("PYTHONPATH", "")])
    return env


def run(cmd: list[str], env: dict, timeout: int = 300) -> dict:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout}s", "seconds": timeout}
    res = {"ok": p.returncode == 0, "seconds": round(time.perf_counter() - t0, 1)}
    if p.returncode != 0:
        res["error"] = (p.stdout + p.stderr)[-1500:]
    return res


def environment() -> dict:
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for mod in ("transformers", "onnx", "onnxscript", "onnxruntime", "tensorrt_lean", "tensorrt", "fastapi"):
        spec = importlib.util.find_spec(mod)
        env[mod] = None if spec is None else _version(mod)
    if env["onnxruntime"]:
        import onnxruntime as ort

        env["onnxruntime_providers"] = ort.get_available_providers()
    return env


def _version(mod: str) -> str:
    try:
        return getattr(__import__(mod), "__version__", "installed")
    except Exception as e:  # noqa: BLE001 - importable on paper, broken in fact: say so
        return f"import fails: {str(e)[:200]}"


def train_steps(out: Path, env: dict, cat: Path) -> dict:
    py = [sys.executable, "-m", "attrx"]
    steps = {}
    for prec in ("bf16", "fp16"):
        steps[f"train_{prec}"] = run([*py, "train", str(cat), "--attributes", ATTRS, "--device", "cuda",
                                      "--amp", prec, "--out", str(out / f"ck-{prec}"), *FAST], env)
        steps[f"train_{prec}"].update(_accuracy(out / f"ck-{prec}"))
        log(f"train {prec}: {steps[f'train_{prec}']}")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "attrx"]
    steps["torchrun_nccl"] = run([*torchrun, "train", str(cat), "--attributes", ATTRS, "--device", "cuda",
                                  "--amp", "bf16", "--out", str(out / "ck-ddp"), *FAST], env)
    steps["torchrun_nccl"].update(_accuracy(out / "ck-ddp"))
    log(f"torchrun: {steps['torchrun_nccl']}")
    return steps


def _accuracy(ck: Path) -> dict:
    log_file = ck / "train_log.jsonl"
    if not log_file.is_file():
        return {}
    rows = [json.loads(x) for x in log_file.read_text().splitlines()]
    return {"best_val_accuracy": min(rows, key=lambda r: r["val_loss"])["val_accuracy"]}


def export_step(out: Path, env: dict, cat: Path) -> dict:
    ck = out / "ck-bf16"
    if not (ck / "model.safetensors").is_file():
        return {"skipped": "no bf16 checkpoint (its training step failed)"}
    res = run([sys.executable, "-m", "attrx", "eval", "--checkpoint", str(ck), str(cat), "--quiet"], env)
    if not res["ok"]:
        return {"eval": res}
    bundle = out / "bundle"
    res = run([sys.executable, "-m", "attrx", "export", "--checkpoint", str(ck), str(cat),
               "--out", str(bundle), "--variants", "fp32,fp16"], env)
    manifest = json.loads((bundle / "manifest.json").read_text()) if (bundle / "manifest.json").is_file() else {}
    res["variants"] = sorted(manifest.get("variants", {}))
    res["refused"] = manifest.get("refused", {})
    res["fp16_accepted"] = "fp16" in res["variants"]
    return res


def serve_step(out: Path, env: dict, environment_: dict) -> dict:
    if "CUDAExecutionProvider" not in (environment_.get("onnxruntime_providers") or []):
        return {"skipped": "this onnxruntime has no CUDAExecutionProvider (install attrx[gpu]: onnxruntime-gpu with its "
                           "cuda and cudnn extras, in place of onnxruntime)"}
    if not (out / "bundle" / "manifest.json").is_file():
        return {"skipped": "no bundle (the export step failed)"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "attrx", "serve", "--bundle", str(out / "bundle"), "--port",
                             str(port), "--providers", "cuda", "--workers", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        return _query(port, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _query(port: int, proc) -> dict:
    import urllib.request

    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        if proc.poll() is not None:
            return {"ok": False, "error": proc.stdout.read()[-1500:]}
        try:
            if urllib.request.urlopen(url + "/readyz", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    model = json.load(urllib.request.urlopen(url + "/v1/model", timeout=10))
    req = urllib.request.Request(url + "/v1/extract", data=json.dumps({"title": "Velora Women Red Dress"}).encode(),
                                 headers={"Content-Type": "application/json"})
    preds = json.load(urllib.request.urlopen(req, timeout=30))
    return {"ok": model["providers"][0] == "CUDAExecutionProvider", "providers": model["providers"],
            "precision": model["precision"], "colour": preds["predictions"].get("colour", {}).get("value")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/gpu-check")
    ap.add_argument("--skip", default="", help="comma-separated: train, export, benchmark, serve")
    ap.add_argument("--batch-size", type=int, default=256, help="the training benchmark's batch size")
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    skip = set(a.skip.split(",")) - {""}
    env = attrx_env(out)
    report = {"check": "gpu", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "environment": environment()}
    log(f"environment: {report['environment']}")
    if not report["environment"]["gpu"]:
        report["skipped"] = "torch sees no CUDA device: nothing here runs on a GPU"
        return _write(out, report)
    report["steps"] = steps(out, env, report["environment"], skip, a.batch_size)
    return _write(out, report)


def steps(out: Path, env: dict, environment_: dict, skip: set, batch: int) -> dict:
    res = {}
    cat = out / "demo" / "catalog.csv"
    if not cat.is_file():
        made = run([sys.executable, "-m", "attrx", "demo-data", "--out", str(cat.parent), "--n", "1500", "--seed", "0",
                    "--quiet"], env)
        if not made["ok"]:
            return {"demo_data": made}
    res.update({} if "train" in skip else train_steps(out, env, cat))
    res["export_fp16"] = {"skipped": "--skip export"} if "export" in skip else export_step(out, env, cat)
    log(f"export: {res['export_fp16']}")
    if "benchmark" in skip:
        res["training_benchmark"] = {"skipped": "--skip benchmark"}
    else:
        bench = run([sys.executable, str(ROOT / "benchmarks" / "training.py"), "--device", "cuda", "--out",
                     str(out / "bench"), "--gpu-batch-size", str(batch), "--gpu-catalog", "6000"], env, timeout=420)
        json_file = out / "bench" / "gpu.json"
        res["training_benchmark"] = json.loads(json_file.read_text()) if json_file.is_file() else bench
    res["serve_cuda"] = {"skipped": "--skip serve"} if "serve" in skip else serve_step(out, env, environment_)
    log(f"serve: {res['serve_cuda']}")
    return res


def _write(out: Path, report: dict) -> int:
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["failed"] = sorted(k for k, v in report.get("steps", {}).items() if isinstance(v, dict) and v.get("ok") is False)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    log(f"report written to {out / 'report.json'}; failed: {', '.join(report['failed']) or 'none'}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
