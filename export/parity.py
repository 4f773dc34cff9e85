"""onnxruntime vs PyTorch: every probability and modality weight must agree within a tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class ParityError(AssertionError):
    pass


def onnx_session(path: Path, threads: int = 0):
    """A CPU session with every graph optimisation, as export's checks and benchmarks/runtime.py run it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_parity(model, onnx_path: Path, batches: dict[str, dict[str, np.ndarray]], output_names: list[str],
                 tolerance: float = 1e-4) -> dict:
    """Run each named batch through both; raise ParityError if any output differs by more than
    `tolerance`. Returns {batch name: max abs difference}."""
    from attrx.training.models.factory import export_module

    sess = onnx_session(onnx_path)
    unimodal = any(n.endswith(".text_probs") for n in output_names)  # the graph's outputs say which wrapper
    wrapper = export_module(model, unimodal).eval()
    report, failures = {}, []
    for name, feeds in batches.items():
        got = sess.run(output_names, feeds)
        with torch.no_grad():
            ref = [t.numpy() for t in wrapper(*(torch.from_numpy(v) for v in feeds.values()))]
        diffs = {o: float(np.abs(g - r).max()) for o, g, r in zip(output_names, got, ref, strict=True)}
        worst = max(diffs, key=diffs.get)
        report[name] = {"batch": int(len(feeds["input_ids"])), "max_abs_diff": diffs[worst]}
        if not diffs[worst] <= tolerance:  # also catches NaN
            failures.append(f"{name}: {worst} differs by {diffs[worst]:.3g} (> {tolerance:g})")
    if failures:
        raise ParityError("onnxruntime and PyTorch disagree: " + "; ".join(failures))
    return report
