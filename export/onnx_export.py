"""Checkpoint -> ONNX with a dynamic batch axis.

Two forms of attention:
- `fused` (the default, opset >= 23): the dynamo exporter turns every
  `scaled_dot_product_attention` (the CLIP towers with `sdpa`, the fusion blocks) into one standard
  ONNX `Attention` node, which onnxruntime runs on CPU (>= 1.23) and TensorRT builds as one kernel.
  Export checks that the graph has exactly as many `Attention` nodes as the model made attention
  calls, so no attention is left as MatMul/Softmax.
- `unfused` (opset >= 17): the TorchScript exporter with the towers' eager attention, plain
  MatMul/Softmax (the form of bundles before schema v2; kept for comparison and older runtimes).
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from attrx.export.attention3d import fold_attention_3d
from attrx.service.contract.bundle import CONCEPT_OUTPUTS, output_names
from attrx.service.contract.preprocess import INPUT_NAMES
from attrx.training.models.factory import export_module

ATTENTION_FORMS = ("fused", "unfused")
MIN_OPSET = {"fused": 23, "unfused": 17}
PASS_THROUGH = ("Cast", "Dropout", "Identity")  # between an attention's Softmax and its MatMul


class ExportError(RuntimeError):
    """The model could not be exported as asked; the message says why."""


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


def set_tower_attention(model, implementation: str | list[str]) -> list[str]:
    """Pick the CLIP towers' attention code: "sdpa" (one fused call per layer) or "eager"
    (MatMul/Softmax), or restore a list this returned. The fusion blocks always call
    scaled_dot_product_attention. Returns the previous settings."""
    towers = [t for t in (getattr(model, "text", None), getattr(model, "vision", None)) if isinstance(t, torch.nn.Module)]
    cfgs = [m.config for tower in towers for m in tower.modules()
            if hasattr(getattr(m, "config", None), "_attn_implementation")]
    before = [c._attn_implementation for c in cfgs]
    for i, c in enumerate(cfgs):
        c._attn_implementation = implementation[i] if isinstance(implementation, list) else implementation
    return before


class _CountAttention(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.kinds: Counter = Counter()

    def __torch_function__(self, func, _types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, k = (args[i] if len(args) > i else (kwargs or {})[n] for i, n in ((0, "query"), (1, "key")))
            self.kinds[attention_kind(q.shape[-2], k.shape[-2])] += 1
        return func(*args, **(kwargs or {}))


def attention_kind(queries: int | None, keys: int | None) -> str:
    """"self" when the queries and the keys are one sequence (same length), else "cross"."""
    return "self" if queries == keys else "cross"


def attention_calls(model, inputs: dict[str, np.ndarray], unimodal: bool = False) -> Counter:
    """How many attention computations of each kind ("self", "cross") one forward pass makes (each
    should be one fused node)."""
    with _CountAttention() as mode, torch.no_grad():
        export_module(model, unimodal).eval()(*(torch.from_numpy(v) for v in inputs.values()))
    return mode.kinds


def attention_nodes(path: Path) -> Counter:
    """The graph's fused Attention nodes by kind: "cross" where the query and key sequences differ
    in length (3D inputs [B, S, H*D] after export/attention3d.py, or 4D [B, H, S, D])."""
    import onnx

    from attrx.export.attention3d import _shapes

    model = onnx.load(str(path), load_external_data=False)
    shapes = _shapes(model)

    def seq(name: str) -> int | None:
        s = shapes.get(name) or []
        return s[1] if len(s) == 3 else s[2] if len(s) == 4 else None

    return Counter(attention_kind(seq(n.input[0]), seq(n.input[1]))
                   for n in model.graph.node if n.op_type == "Attention")


def op_counts(path: Path) -> Counter:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def export_onnx(model, attributes: list[str], path: Path, *, max_len: int, image_size: int,
                attention: str = "fused", opset: int | None = None, unimodal: bool = True) -> list[str]:
    """Write the ONNX graph; returns its output names. With `unimodal`, the title-only and
    image-only probabilities are outputs too. Raises ExportError when an attention was left unfused
    in a fused export."""
    if attention not in ATTENTION_FORMS:
        raise ValueError(f"attention must be one of {ATTENTION_FORMS}, got {attention!r}")
    opset = opset or MIN_OPSET[attention]
    if opset < MIN_OPSET[attention]:
        raise ValueError(f"opset {opset} is too old for {attention} attention (needs >= {MIN_OPSET[attention]})")
    model = model.eval()
    before = set_tower_attention(model, "sdpa" if attention == "fused" else "eager")
    wrapper = export_module(model, unimodal).eval()
    outputs = [n for a in attributes for n in output_names(a, unimodal)]
    if hasattr(model, "forward_export"):  # SIMLA: the concept head's outputs after the attributes'
        outputs += list(CONCEPT_OUTPUTS)
    example = example_inputs(model, 2, max_len, image_size)
    args = tuple(torch.from_numpy(v) for v in example.values())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if attention == "fused":
                _export_dynamo(wrapper, args, path, outputs, opset)
            else:
                torch.onnx.export(wrapper, args, str(path), dynamo=False, opset_version=opset,
                                  input_names=list(INPUT_NAMES), output_names=outputs,
                                  dynamic_axes={n: {0: "batch"} for n in [*INPUT_NAMES, *outputs]})
        import onnx

        onnx.checker.check_model(str(path))
        if attention == "fused":
            fold_attention_3d(path)
            _check_fused(model, example, path, unimodal)
    finally:
        set_tower_attention(model, before)
    return outputs


def unfused_attention(path: Path) -> list[str]:
    """Softmax nodes that weigh a MatMul over activations: attention left as MatMul/Softmax. (The
    heads' softmaxes feed outputs or elementwise mixing, never a MatMul.)"""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def weighs_matmul(name: str, depth: int = 0) -> bool:
        for n in consumers.get(name, []):
            if n.op_type == "MatMul" and not any(i in weights for i in n.input):
                return True
            if n.op_type in PASS_THROUGH and depth < 3 and weighs_matmul(n.output[0], depth + 1):
                return True
        return False

    return [n.name for n in g.node if n.op_type == "Softmax" and weighs_matmul(n.output[0])]


def _check_fused(model, example: dict[str, np.ndarray], path: Path, unimodal: bool = False) -> None:
    """Every attention of the exported graph is one Attention node, self-attention and
    cross-attention (SIMLA) counted apart: each kind the model computes is in the graph, fused, and
    no attention is left as MatMul/Softmax. (The graph may have fewer Attention nodes than the model
    makes attention calls: the exporter drops blocks whose output nothing reads, e.g. the fusion
    blocks of a --no-mwa model with evidence modality weights.)"""
    calls, fused, left = attention_calls(model, example, unimodal), attention_nodes(path), unfused_attention(path)
    missing = [k for k in calls if calls[k] and not fused[k]]
    if left or missing:
        raise ExportError(f"{len(left)} attention(s) left as MatMul/Softmax ({', '.join(left[:5])}); fused "
                          f"{dict(fused)} for attention calls {dict(calls)}; check the towers' attn_implementation")


def _export_dynamo(wrapper, args, path: Path, outputs: list[str], opset: int) -> None:
    import contextlib
    import io
    import logging

    batch = torch.export.Dim("batch", min=1)
    # the exporter prints its progress and warns about torchvision ops it cannot register
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(wrapper, args, str(path), dynamo=True, opset_version=opset, external_data=False,
                          input_names=list(INPUT_NAMES), output_names=outputs,
                          dynamic_shapes=tuple({0: batch} for _ in INPUT_NAMES), optimize=True,
                          verbose=False)
