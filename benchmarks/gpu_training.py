"""The GPU part of benchmarks/training.py (`--device cuda`): per model config, the model alone
against `attrx train`'s loop, with the GPU's utilisation sampled while the loop runs.

- model alone: random valid inputs already on the GPU, the training forward (fused + auxiliary
  heads) and loss, backward and AdamW at bf16, eager; warm-up steps, then timed steps between
  synchronisations. No data loading: the rate a loop could at best reach.
- the loop: `attrx train --device cuda --amp bf16` on a demo catalog (streaming, the default
  workers); products/s of its epochs after the first (from the train log: training items over the
  epoch's seconds, validation included) and of the training steps alone.
- utilisation: NVML's GPU utilisation (torch.cuda.utilization), else nvidia-smi's, every 0.5 s
  from the end of the first epoch to the end of the run.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def utilisation_reader():
    """A function returning the GPU's utilisation in percent, and what it reads it from."""
    import torch

    try:
        torch.cuda.utilization(0)
        return (lambda: float(torch.cuda.utilization(0))), "nvml (torch.cuda.utilization)"
    except Exception:  # noqa: BLE001 - pynvml missing: try nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None, "neither NVML (pip install nvidia-ml-py) nor nvidia-smi is available"

    def read() -> float:
        out = subprocess.run([smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=5).stdout
        return float(out.split()[0])

    return read, "nvidia-smi"


class Sampler(threading.Thread):
    def __init__(self, read, active, period: float = 0.5):
        super().__init__(daemon=True)
        self.read, self.active, self.period = read, active, period
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.period):
            if self.active():
                try:
                    self.samples.append(self.read())
                except Exception:  # noqa: BLE001 - a missed sample is not a failed benchmark
                    pass


def model_alone(config: str, batch: int, steps: int = 30, warmup: int = 5, device: str = "cuda") -> dict:
    import torch

    from attrx.training.loop import TrainForward, _loss
    from attrx.training.models.factory import create_model
    from attrx.training.optim import adamw
    from attrx.training.params import TrainConfig

    cfg = TrainConfig(catalog="-", attributes=["a", "b", "c", "d"], out="-", config=config)
    n_classes = [12, 40, 10, 5]
    special = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
    model, pre = create_model(cfg, n_classes, special, 8000)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model.to(dev).train()
    fwd = TrainForward(model)
    g = torch.Generator(device=dev).manual_seed(0)
    length = pre.max_text_len
    ids = torch.randint(5, 7999, (batch, length), device=dev, generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    inputs = {"input_ids": ids, "attention_mask": torch.ones(batch, length, dtype=torch.long, device=dev),
              "pixel_values": torch.randn(batch, 3, pre.image_size, pre.image_size, device=dev, generator=g),
              "text_present": torch.ones(batch, device=dev), "image_present": torch.ones(batch, device=dev)}
    labels = torch.stack([torch.randint(0, k, (batch,), device=dev, generator=g) for k in n_classes], 1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(model, params, 0.05, 1e-4)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = _loss(fwd(**inputs), inputs, labels, 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
    return {"products_per_s": round(batch * steps / dt, 1), "steps": steps, "batch": batch,
            "peak_memory_gib": None if mem is None else round(mem, 2)}


def loop(config: str, batch: int, catalog: Path, out: Path, epochs: int, read) -> dict:
    cmd = [sys.executable, "-m", "attrx", "train", str(catalog), "--attributes", "category,colour,pattern,gender",
           "--config", config, "--device", "cuda", "--amp", "bf16", "--batch-size", str(batch),
           "--warmup-epochs", "0", "--e2e-epochs", str(epochs), "--tune-epochs", "0", "--quiet", "--out", str(out)]
    log_file = out / "train_log.jsonl"
    shutil.rmtree(out, ignore_errors=True)
    sampler = Sampler(read, lambda: log_file.is_file() and log_file.stat().st_size > 0) if read else None
    if sampler:
        sampler.start()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if sampler:
        sampler.stop.set()
        sampler.join()
    if p.returncode != 0:
        return {"error": (p.stdout + p.stderr)[-2000:]}
    rows = [json.loads(x) for x in log_file.read_text().splitlines()]
    counts = json.loads((out / "config.json").read_text())["counts"]
    later = rows[1:] or rows
    rates = [counts["train"] / r["seconds"] for r in later]
    util = sampler.samples if sampler else []
    return {"products_per_s": round(statistics.median(rates), 1), "per_epoch": [round(x, 1) for x in rates],
            "train_items": counts["train"], "wall_s": round(wall, 1),
            "gpu_utilisation_pct": {"mean": round(statistics.mean(util), 1) if util else None,
                                    "median": statistics.median(util) if util else None, "samples": len(util)}}


def gpu_part(root: Path, catalog: Path, configs: list[str], batch: int, epochs: int) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "torch sees no CUDA device"}
    read, source = utilisation_reader()
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "batch_size": batch,
           "utilisation_source": source, "configs": {}}
    for config in configs:
        alone = model_alone(config, batch)
        log(f"{config}: model alone {alone['products_per_s']} products/s at batch {batch}")
        run = loop(config, batch, catalog, root / f"gpu-{config}", epochs, read)
        log(f"{config}: loop {run.get('products_per_s')} products/s, utilisation {run.get('gpu_utilisation_pct')}")
        ratio = round(run["products_per_s"] / alone["products_per_s"], 3) if "products_per_s" in run else None
        out["configs"][config] = {"model_alone": alone, "loop": run, "loop_over_model_alone": ratio}
    b32 = out["configs"].get("cma-clip-b32", {}).get("loop", {})
    small = out["configs"].get("small", {})
    out["targets"] = {
        "cma-clip-b32 >= 2000 products/s": (b32.get("products_per_s") or 0) >= 2000 if b32 else None,
        "cma-clip-b32 utilisation >= 70%": ((b32.get("gpu_utilisation_pct") or {}).get("mean") or 0) >= 70
        if b32 else None,
        "small loop >= 50% of model alone": (small.get("loop_over_model_alone") or 0) >= 0.5 if small else None}
    return out
