"""Precision variants of the fp32 graph, each accepted only if it keeps the fp32 predictions.

- fp16 (for GPUs): weights and activations in half precision, inputs and outputs kept fp32, and the
  numerically fragile ops (LayerNorm, Softmax, reductions, the colour histogram's scatter) kept in
  fp32. Accepted when, on real catalog items, the argmax agrees with fp32 on >= 99.5% of items for
  every attribute and no probability moves by more than 1e-2.
- int8 (for CPUs): static quantisation of the MatMul/Gemm weights and their input activations,
  with the activations' scales calibrated once on catalog items outside the test split (the
  checkpoint's training split). A fixed scale makes a product's answer independent of its
  batch-mates; dynamic quantisation took one activation scale per batch, so a product's answer
  moved with whoever shared its batch. Accepted when the argmax agrees on >= 99%, per-attribute
  accuracy on the checkpoint's test split drops by <= 0.005, and the test split run one item at a
  time and 32 at a time gives identical values and probabilities within 1e-6.

Each conversion is tried first on the whole graph, then with the heads (and the colour histogram)
left in fp32; the first attempt that passes its gate is kept. onnxruntime's CPU provider runs an
fp16 graph with casts around the ops it has no half kernel for, so the fp16 check here measures
the rounding of weights and activations, as a GPU would see it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attrx.export.parity import onnx_session

FP16_KEEP_FP32 = ["LayerNormalization", "SkipLayerNormalization", "Softmax", "ReduceMean", "ReduceSum",
                  "ReduceMax", "Sigmoid", "Sqrt", "Div", "Pow", "ScatterElements", "Range", "CumSum"]
# module scopes left in full precision on the second attempt
SENSITIVE_SCOPES = ("model.heads.", "model.colour")
# ... and on int8's third: the title-only and image-only heads the conflict checks read as well
INT8_MORE_SCOPES = (*SENSITIVE_SCOPES, "model.aux_text", "model.aux_image")
# ... and always, in fp16: the colour histogram's binning is discontinuous, so half-precision
# pixels would move counts between bins
FP16_FP32_SCOPES = ("model.colour",)

GATES = {
    "fp16": {"min_agreement": 0.995, "max_prob_diff": 1e-2},
    "int8": {"min_agreement": 0.99, "max_accuracy_drop": 0.005, "max_batch_diff": 1e-6},
}
BATCH_CHECK = (1, 32)  # the batch sizes whose answers must agree (gate "max_batch_diff")
CALIBRATION_ITEMS = 1024  # catalog items (training split) the int8 activation scales are calibrated on
# where each variant is meant to run (keys of attrx.service.inference.runtime.onnxruntime_backend.PROVIDERS)
INTENDED_PROVIDERS = {"fp32": ["cpu", "cuda", "tensorrt"], "fp16": ["cuda", "tensorrt"], "int8": ["cpu"]}
FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


@dataclass
class EvalSet:
    """Real catalog items (the checkpoint's test split) with their labels (-100: unlabelled)."""
    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    attributes: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Outcome:
    precision: str
    accepted: bool
    report: dict
    reasons: list[str] = field(default_factory=list)
    attempt: str = ""


def nodes_in(path: Path, scopes: tuple[str, ...]) -> list[str]:
    """Names of the nodes the exporter placed in these module scopes (the dynamo exporter records
    each node's scope in its metadata)."""
    import onnx

    names = []
    for n in onnx.load(str(path)).graph.node:
        where = {p.key: p.value for p in n.metadata_props}.get("pkg.torch.onnx.name_scopes", "")
        if any(s in where for s in scopes):
            names.append(n.name)
    return names


class ConversionError(RuntimeError):
    pass


def dedupe_nodes(graph) -> int:
    """Drop the nodes that repeat an earlier node exactly (op, inputs, outputs, attributes), and give
    the remaining same-named nodes distinct names; returns how many were dropped.

    onnxruntime 1.30's float16 converter casts an fp32-kept initializer once per consumer, and every
    copy has the same name and output ("two nodes with same node name (..._cast_to_fp32_node)"). The
    copies compute the same tensor, so keeping the first (it precedes every consumer) is exact."""
    seen, keep, dropped = set(), [], 0
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        keep.append(node)
    producers: dict[str, str] = {}
    for node in keep:
        for out in node.output:
            if out and out in producers:
                raise ConversionError(f"the converted graph computes {out!r} twice, in nodes {producers[out]!r} "
                                      f"and {node.name!r}, differently")
            producers[out] = node.name
    used: set[str] = set()
    for node in keep:
        base, k = node.name, 0
        while node.name and node.name in used:
            k += 1
            node.name = f"{base}_{k}"
        used.add(node.name)
    del graph.node[:]
    graph.node.extend(keep)
    return dropped


def to_fp16(src: Path, dst: Path, keep_fp32_nodes: list[str]) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=FP16_KEEP_FP32,
                                     node_block_list=keep_fp32_nodes)
    dedupe_nodes(model.graph)
    onnx.save(model, str(dst))


def to_int8(src: Path, dst: Path, keep_fp32_nodes: list[str], calibration: EvalSet | None = None) -> None:
    """Static int8: weights per tensor, activations with scales fixed from `calibration`'s items
    (the 99.999th percentile of each activation's magnitude over them; MinMax lost 1-2 points of
    agreement more on the demo model). Without calibration items it falls back to dynamic quantisation, whose
    answers depend on the batch (the gate then refuses it)."""
    import contextlib
    import logging
    import sys

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # per-tensor weights: per-channel ones gave the heads' MatMuls zero points onnxruntime's CPU
    # kernel refuses ("b zero point is not valid")
    clean = dst.with_name(dst.name + ".src.onnx")
    drop_weight_value_info(src, clean)
    logging.disable(logging.WARNING)  # the quantiser's advice to pre-process, logged on the root logger
    try:
        if calibration is None:
            quantize_dynamic(str(clean), str(dst), op_types_to_quantize=["MatMul", "Gemm"],
                             weight_type=QuantType.QInt8, per_channel=False, nodes_to_exclude=keep_fp32_nodes,
                             extra_options={"MatMulConstBOnly": True})
            return
        # the histogram calibrators print their progress: onto stderr, off a benchmark's JSON
        with contextlib.redirect_stdout(sys.stderr):
            _quantize_static(clean, dst, calibration, keep_fp32_nodes)
    finally:
        logging.disable(logging.NOTSET)
        clean.unlink(missing_ok=True)


def _quantize_static(clean: Path, dst: Path, calibration: EvalSet, keep_fp32_nodes: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(str(clean), str(dst), _Calibration(calibration.inputs), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul", "Gemm"], per_channel=False,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=keep_fp32_nodes, calibrate_method=CalibrationMethod.Percentile,
                    # com.microsoft's QuantizeLinear/DequantizeLinear: onnxruntime 1.23, pyproject's floor, has
                    # no kernel for the ONNX QuantizeLinear at this graph's opset 23
                    extra_options={"MatMulConstBOnly": True, "UseQDQContribOps": True})


class _Calibration:
    """onnxruntime's CalibrationDataReader over encoded catalog items, 16 at a time."""

    def __init__(self, inputs: dict[str, np.ndarray], batch: int = 16):
        n = len(next(iter(inputs.values())))
        batch = min(batch, n)
        # equal batches only: onnxruntime's histogram calibrators stack them, and a shorter last one
        # fails there ("inhomogeneous shape"); the few items left over are not needed
        self._feeds = iter([{k: v[i:i + batch] for k, v in inputs.items()} for i in range(0, n - batch + 1, batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def batch_independence(sess, ev: EvalSet, outputs: list[str]) -> dict:
    """The test split run BATCH_CHECK[0] and BATCH_CHECK[1] items at a time: per attribute, how many
    values differ and the largest difference of any probability or modality weight."""
    small, large = (run_session(sess, ev.inputs, outputs, batch=b) for b in BATCH_CHECK)
    out = {}
    for j, a in enumerate(ev.attributes):
        p1, p32 = small[2 * j], large[2 * j]
        out[a] = {"values_differ": int((p1.argmax(1) != p32.argmax(1)).sum()),
                  "max_batch_diff": float(max(np.abs(p1 - p32).max(), np.abs(small[2 * j + 1] - large[2 * j + 1]).max()))}
    return out


def drop_weight_value_info(src: Path, dst: Path) -> None:
    """A copy of the graph without value_info entries for its initializers (the exporter writes
    them; they only repeat the weights' shapes). onnxruntime's quantiser before 1.32 rewrites a Gemm's
    weight under the same name and its shape inference then fails on the stale entry ("Inferred
    shape and existing shape differ in dimension 0")."""
    import onnx

    model = onnx.load(str(src))
    weights = {i.name for i in model.graph.initializer}
    keep = [v for v in model.graph.value_info if v.name not in weights]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    onnx.save(model, str(dst))


session = onnx_session  # the one CPU session of export/

CONVERT = {"fp16": to_fp16, "int8": to_int8}


def run_session(sess, inputs: dict[str, np.ndarray], outputs: list[str], batch: int = 64) -> list[np.ndarray]:
    n = len(next(iter(inputs.values())))
    parts = [sess.run(outputs, {k: v[i:i + batch] for k, v in inputs.items()}) for i in range(0, n, batch)]
    return [np.concatenate(col) for col in zip(*parts, strict=True)]


def compare(ref: list[np.ndarray], got: list[np.ndarray], ev: EvalSet) -> dict:
    """Per attribute: argmax agreement, largest probability difference, accuracy of both."""
    out = {}
    for j, a in enumerate(ev.attributes):
        p_ref, p_got = ref[2 * j], got[2 * j]
        labelled = ev.labels[:, j] >= 0
        acc = [float((p.argmax(1)[labelled] == ev.labels[labelled, j]).mean()) if labelled.any() else None
               for p in (p_ref, p_got)]
        out[a] = {"agreement": float((p_ref.argmax(1) == p_got.argmax(1)).mean()),
                  "max_prob_diff": float(np.abs(p_ref - p_got).max()),
                  "max_weight_diff": float(np.abs(ref[2 * j + 1] - got[2 * j + 1]).max()),
                  "accuracy_fp32": acc[0], "accuracy": acc[1],
                  "accuracy_drop": None if acc[0] is None else round(acc[0] - acc[1], 6)}
    return out


def gate(precision: str, per_attribute: dict) -> list[str]:
    """The reasons the variant fails its gate (empty: accepted)."""
    g, reasons = GATES[precision], []
    for a, r in per_attribute.items():
        if r["agreement"] < g["min_agreement"]:
            reasons.append(f"{a}: argmax agrees with fp32 on {r['agreement']:.2%} of items "
                           f"(needs >= {g['min_agreement']:.1%})")
        if "max_prob_diff" in g and not r["max_prob_diff"] <= g["max_prob_diff"]:
            reasons.append(f"{a}: a probability moves by {r['max_prob_diff']:.3g} (needs <= {g['max_prob_diff']:g})")
        if "max_accuracy_drop" in g and r["accuracy_drop"] is not None \
                and r["accuracy_drop"] > g["max_accuracy_drop"]:
            reasons.append(f"{a}: test accuracy drops by {r['accuracy_drop']:.4f} "
                           f"(needs <= {g['max_accuracy_drop']})")
        if "max_batch_diff" in g and "values_differ" in r and (r["values_differ"] or
                                                                not r["max_batch_diff"] <= g["max_batch_diff"]):
            reasons.append(f"{a}: its answers depend on the batch: batch {BATCH_CHECK[0]} and batch "
                           f"{BATCH_CHECK[1]} differ in {r['values_differ']} values, probabilities by up to "
                           f"{r['max_batch_diff']:.3g} (needs identical values and <= {g['max_batch_diff']:g})")
    return reasons


def make_variant(precision: str, fp32: Path, dst: Path, outputs: list[str], ev: EvalSet,
                 ref: list[np.ndarray], calibration: EvalSet | None = None) -> Outcome:
    """Convert, measure against fp32 on `ev`, and keep the first attempt that passes its gate.
    `dst` is left in place only for an accepted variant. `calibration`: int8's activation scales
    (catalog items outside `ev`)."""
    always = nodes_in(fp32, FP16_FP32_SCOPES) if precision == "fp16" else []
    attempts = {"whole graph": always, "heads and colour histogram in fp32": nodes_in(fp32, SENSITIVE_SCOPES)}
    if precision == "int8":
        attempts["heads, colour histogram and single-modality heads in fp32"] = nodes_in(fp32, INT8_MORE_SCOPES)
    tried = []
    for label, keep in attempts.items():
        if tried and set(keep) <= set(always):
            continue  # nothing more to keep in fp32: the second attempt would repeat the first
        if precision == "int8":
            to_int8(fp32, dst, keep, calibration)
        else:
            CONVERT[precision](fp32, dst, keep)
        report = {"items": len(ev), "source": ev.source, "attempt": label, "gate": GATES[precision],
                  "kept_fp32_nodes": len(keep), "attributes": {}}
        if precision == "int8":
            report["quantisation"] = "static" if calibration is not None else "dynamic"
            report["calibration"] = None if calibration is None else f"{len(calibration)} items, {calibration.source}"
        try:
            sess = session(dst)
            got = run_session(sess, ev.inputs, outputs)
            batches = batch_independence(sess, ev, outputs) if "max_batch_diff" in GATES[precision] else {}
        except Exception as e:  # noqa: BLE001 - onnxruntime's own errors: the variant does not run
            tried.append(Outcome(precision, False, report, [f"onnxruntime cannot run it: {e}"], label))
            continue
        per_attribute = report["attributes"] = compare(ref, got, ev)
        for a, r in batches.items():
            per_attribute[a].update(r)
        reasons = gate(precision, per_attribute)
        tried.append(Outcome(precision, not reasons, report, reasons, label))
        if not reasons:
            return tried[-1]
    dst.unlink(missing_ok=True)
    return tried[-1]


def describe(outcome: Outcome) -> str:
    per = outcome.report["attributes"]
    worst = min((r["agreement"] for r in per.values()), default=None)
    agreement = f"argmax agreement >= {worst:.2%}" if worst is not None else "not run"
    text = f"{outcome.precision}: {agreement} on {outcome.report['items']} items ({outcome.attempt})"
    return text if outcome.accepted else f"{text}; refused: " + "; ".join(outcome.reasons)
