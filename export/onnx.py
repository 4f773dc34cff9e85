"""CMA-CLIP checkpoint -> ONNX (opset >= 17, dynamic batch axis)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from service.bundle import output_names
from service.preprocess import INPUT_NAMES
from training.models.cma_clip import CMAClip, ExportWrapper


def example_inputs(model, batch: int, max_len: int, image_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random but valid inputs: real-looking token sequences, random pixels, random modality presence
    (never both missing)."""
    rng = np.random.default_rng(seed)
    spec = model.token_spec
    ids = np.full((batch, max_len), spec["pad_token_id"], dtype=np.int64)
    mask = np.zeros((batch, max_len), dtype=np.int64)
    for i in range(batch):
        n = int(rng.integers(2, max_len + 1))
        ids[i, :n] = rng.integers(5, spec["vocab_size"], n)
        ids[i, 0], ids[i, n - 1] = spec["bos_token_id"], spec["eos_token_id"]
        mask[i, :n] = 1
    tp = (rng.random(batch) < 0.8).astype(np.float32)
    ip = np.where(tp == 0, 1.0, (rng.random(batch) < 0.8)).astype(np.float32)
    return {
        "input_ids": ids, "attention_mask": mask,
        "pixel_values": rng.normal(size=(batch, 3, image_size, image_size)).astype(np.float32),
        "text_present": tp, "image_present": ip,
    }


def use_eager_attention(model: CMAClip) -> None:
    """Trace the CLIP towers' attention as plain MatMul/Softmax: onnxruntime runs that faster on
    CPU than the exported form of torch's fused SDPA (measured by benchmarks/runtime.py)."""
    if model.family != "cma-clip":
        return
    for tower in (model.text, model.vision):
        for m in tower.modules():
            cfg = getattr(m, "config", None)
            if cfg is not None and hasattr(cfg, "_attn_implementation"):
                cfg._attn_implementation = "eager"


def export_onnx(model, attributes: list[str], path: Path, *, max_len: int, image_size: int,
                opset: int = 17) -> list[str]:
    """Write the ONNX graph; returns its output names."""
    if opset < 17:
        raise ValueError(f"opset {opset} is too old: attrx bundles need opset >= 17")
    model = model.eval()
    use_eager_attention(model)
    wrapper = ExportWrapper(model).eval()
    outputs = [n for a in attributes for n in output_names(a)]
    args = tuple(torch.from_numpy(v) for v in example_inputs(model, 2, max_len, image_size).values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, args, str(path), dynamo=False, opset_version=opset,
            input_names=list(INPUT_NAMES), output_names=outputs,
            dynamic_axes={n: {0: "batch"} for n in [*INPUT_NAMES, *outputs]},
        )
    import onnx

    onnx.checker.check_model(str(path))
    return outputs
