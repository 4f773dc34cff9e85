"""Training data paths and torchrun, measured side by side (prints JSON).

    python benchmarks/training.py --out build/bench-training

1. items/s of `attrx train` (tiny config, 2 cores) on a 3,000-product demo catalog: the in-memory
   path, the streaming path (decoded images in a disk store, decoded this run), and the streaming
   path with a warm --image-cache; alternating repetitions. items/s = training items (epochs x
   training split) / wall time of the whole run, decoding included; epoch-only items/s from the
   train log beside it. Targets: streaming >= 0.9x in-memory, warm cache >= 1.0x.
2. Peak RSS of the `attrx train` process on a 3,000- and a 30,000-product catalog, streaming and
   in-memory (one warm-up epoch). Target: streaming grows by < 25%.
3. torchrun with 2 gloo processes vs 1 process, same global batch: items/s and final validation
   accuracy. On a 2-core machine this shows correctness, not speed.
4. `--baseline-bin DIR` (the bin folder of another attrx install, e.g. the previous commit): the
   streaming run of 1. with this checkout and with that one, alternating; the ratio of items/s.
   Target: this checkout >= 1.0x (the training loop must not slow down on the CPU).
5. `--device cuda`: per model config (`--gpu-configs`, default small and cma-clip-b32) at
   `--gpu-batch-size` (default 256), bf16: the model alone (random valid inputs on the GPU,
   forward_train + loss + backward + AdamW, no data loading) and `attrx train` on a demo catalog,
   its epochs' products/s and the GPU's utilisation sampled every 0.5 s (NVML through
   torch.cuda.utilization, else nvidia-smi). Targets (issue 21): cma-clip-b32 >= 2,000 products/s
   at >= 70% utilisation; small's loop >= 50% of its model-alone rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ATTRX = [sys.executable, "-m", "attrx"]  # works where attrx is on the path but not installed (GPU machines)
TRAIN = ["--config", "tiny", "--batch-size", "32", "--quiet", "--threads", "2"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def catalog(root: Path, n: int, seed: int = 0) -> Path:
    out = root / f"demo-{n}"
    if not (out / "catalog.csv").is_file():
        log(f"demo catalog of {n} products...")
        subprocess.run([*ATTRX, "demo-data", "--out", str(out), "--n", str(n), "--seed", str(seed),
                        "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return out / "catalog.csv"


def run_train(cmd: list[str], out: Path) -> dict:
    """Run to completion; wall time and the process's own peak RSS (wait4's ru_maxrss)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    text = proc.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    counts = json.loads((out / "config.json").read_text())["counts"]
    items = counts["train"] * len(rows)
    best = min(rows, key=lambda r: r["val_loss"])
    return {"wall_s": round(wall, 2), "items_per_s": round(items / wall, 1),
            "epoch_items_per_s": round(items / sum(r["seconds"] for r in rows), 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "best_val_accuracy": best["val_accuracy"],
            "warm_cache": "warm cache" in text}


def data_paths(root: Path, reps: int) -> dict:
    cat = catalog(root, 3000)
    base = [str(BIN / "attrx"), "train", str(cat), "--attributes", "category,colour,pattern,gender",
            *TRAIN, "--warmup-epochs", "1", "--e2e-epochs", "3", "--tune-epochs", "0"]
    cache = root / "image-cache"
    configs = {"in_memory": [*base, "--in-memory"], "streaming": base, "warm_cache": [*base, "--image-cache", str(cache)]}
    run_train(configs["warm_cache"], root / "fill-cache")  # fills the cache: later warm_cache runs find it
    runs = {k: [] for k in configs}
    for rep in range(reps):
        names = list(configs)[rep % 3:] + list(configs)[: rep % 3]
        for name in names:
            r = run_train(configs[name], root / f"{name}-{rep}")
            log(f"{name} rep {rep}: {r['items_per_s']} items/s (epochs {r['epoch_items_per_s']}), "
                f"{r['wall_s']} s, peak RSS {r['peak_rss_mb']} MB")
            runs[name].append(r)
    med = {k: statistics.median(x["items_per_s"] for x in v) for k, v in runs.items()}
    ratio = {k: [round(a["items_per_s"] / b["items_per_s"], 3) for a, b in zip(v, runs["in_memory"], strict=True)]
             for k, v in runs.items() if k != "in_memory"}
    return {"catalog": 3000, "runs": runs, "median_items_per_s": med,
            "ratio_to_in_memory": {k: {"median": statistics.median(v), "per_rep": v} for k, v in ratio.items()},
            "targets": {"streaming": 0.9, "warm_cache": 1.0}}


def memory(root: Path, sizes: list[int]) -> dict:
    out = {}
    for n in sizes:
        cat = catalog(root, n)
        base = [str(BIN / "attrx"), "train", str(cat), "--attributes", "colour,gender", *TRAIN,
                "--warmup-epochs", "1", "--e2e-epochs", "0", "--tune-epochs", "0"]
        for name, extra in (("streaming", []), ("in_memory", ["--in-memory"])):
            r = run_train([*base, *extra], root / f"rss-{name}-{n}")
            log(f"RSS {name} n={n}: {r['peak_rss_mb']} MB")
            out.setdefault(name, {})[n] = r["peak_rss_mb"]
    growth = {k: round(v[sizes[-1]] / v[sizes[0]] - 1, 3) for k, v in out.items()}
    return {"peak_rss_mb": out, "growth": growth, "target_streaming_growth_below": 0.25,
            "met": growth["streaming"] < 0.25}


def ddp(root: Path) -> dict:
    cat = catalog(root, 1500, seed=3)
    common = ["train", str(cat), "--attributes", "colour,gender", "--config", "tiny",
              "--warmup-epochs", "1", "--e2e-epochs", "12", "--tune-epochs", "0", "--e2e-lr", "2e-3",
              "--batch-size", "32", "--quiet", "--threads", "1"]
    one = run_train([str(BIN / "attrx"), *common], root / "ddp-1")
    two = run_train([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", str(BIN / "attrx"), *common],
                    root / "ddp-2")
    for k, r in (("1 process", one), ("2 processes", two)):
        log(f"DDP {k}: {r['items_per_s']} items/s, best val accuracy {r['best_val_accuracy']}")
    return {"one_process": one, "two_processes": two, "items_per_s_ratio": round(two["items_per_s"] / one["items_per_s"], 3),
            "note": "2 CPU cores: two processes share them, so this checks correctness (accuracy), not speed"}


def baseline(root: Path, reps: int, other: Path) -> dict:
    """The streaming training run with this checkout's attrx and with another install's, alternating."""
    cat = catalog(root, 3000)
    args = ["train", str(cat), "--attributes", "category,colour,pattern,gender", *TRAIN,
            "--warmup-epochs", "1", "--e2e-epochs", "3", "--tune-epochs", "0"]
    bins = {"this": BIN, "baseline": other}
    runs = {k: [] for k in bins}
    for rep in range(reps):
        for name in (("this", "baseline") if rep % 2 == 0 else ("baseline", "this")):
            r = run_train([str(bins[name] / "attrx"), *args], root / f"cmp-{name}-{rep}")
            log(f"{name} rep {rep}: {r['items_per_s']} items/s (epochs {r['epoch_items_per_s']})")
            runs[name].append(r)
    ratios = {k: [round(a[k] / b[k], 3) for a, b in zip(runs["this"], runs["baseline"], strict=True)]
              for k in ("items_per_s", "epoch_items_per_s")}
    return {"baseline_bin": str(other), "runs": runs,
            "ratio": {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "per_rep": v}
                      for k, v in ratios.items()}, "target": 1.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="build/bench-training")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--sizes", default="3000,30000")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: data, memory, ddp")
    ap.add_argument("--baseline-bin", help="bin folder of another attrx install to compare the loop with")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: only the GPU part (model alone vs the training loop, GPU utilisation)")
    ap.add_argument("--gpu-configs", default="small,cma-clip-b32")
    ap.add_argument("--gpu-batch-size", type=int, default=256)
    ap.add_argument("--gpu-catalog", type=int, default=10000, help="products in the GPU part's demo catalog")
    ap.add_argument("--gpu-epochs", type=int, default=3)
    a = ap.parse_args()
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    skip = set(a.skip.split(",")) - {""}
    result = {"benchmark": "training", "cpus": os.cpu_count()}
    if a.device == "cuda":
        from gpu_training import gpu_part

        result["gpu"] = gpu_part(root, catalog(root, a.gpu_catalog, seed=5), a.gpu_configs.split(","),
                                 a.gpu_batch_size, a.gpu_epochs)
        (root / "gpu.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return
    if a.baseline_bin:
        result["baseline"] = baseline(root, a.reps, Path(a.baseline_bin))
        skip |= {"data", "memory", "ddp"}
    if "data" not in skip:
        result["data_paths"] = data_paths(root, a.reps)
    if "memory" not in skip:
        result["memory"] = memory(root, [int(x) for x in a.sizes.split(",")])
    if "ddp" not in skip:
        result["ddp"] = ddp(root)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
