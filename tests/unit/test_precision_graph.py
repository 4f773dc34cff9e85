"""The clean-ups attrx applies to onnxruntime's own converters' output, on small hand-built graphs:
what onnxruntime 1.25-1.31's float16 converter writes for a weight kept in fp32 with two consumers
(the same Cast twice, same name, same output), and the initializer value_info the quantiser before
1.32 trips on. benchmarks/onnxruntime_versions.py runs the real converters of every release."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from attrx.export.precision import ConversionError, dedupe_nodes, drop_weight_value_info


def _doubled_cast_graph() -> onnx.ModelProto:
    """x + cast(w) and x * cast(w), where the one fp16 weight is cast to fp32 once per consumer."""
    w = numpy_helper.from_array(np.array([1.5, -2.0, 0.25], dtype=np.float16), "w")
    cast = helper.make_node("Cast", ["w"], ["w_cast_to_fp32"], name="w_cast_to_fp32_node", to=TensorProto.FLOAT)
    nodes = [cast, helper.make_node("Add", ["x", "w_cast_to_fp32"], ["a"], name="add"),
             helper.make_node("Cast", ["w"], ["w_cast_to_fp32"], name="w_cast_to_fp32_node", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["a", "w_cast_to_fp32"], ["y"], name="mul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_doubled_cast_is_dropped_and_the_graph_computes_the_same():
    model = _doubled_cast_graph()
    with pytest.raises(Exception, match="same node name|w_cast_to_fp32"):  # what onnxruntime says of it
        _session(model)
    assert dedupe_nodes(model.graph) == 1
    onnx.checker.check_model(model, full_check=True)
    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    w = np.array([1.5, -2.0, 0.25], dtype=np.float32)
    np.testing.assert_allclose(_session(model).run(None, {"x": x})[0], (x + w) * w)
    assert [n.name for n in model.graph.node] == ["w_cast_to_fp32_node", "add", "mul"]


def test_same_named_different_nodes_are_renamed_and_different_producers_refused():
    model = _doubled_cast_graph()
    model.graph.node[2].output[0] = "w2"  # a different tensor under the same node name
    model.graph.node[3].input[1] = "w2"
    assert dedupe_nodes(model.graph) == 0
    assert [n.name for n in model.graph.node][:3] == ["w_cast_to_fp32_node", "add", "w_cast_to_fp32_node_1"]
    _session(model)
    clash = _doubled_cast_graph()
    clash.graph.node[2].attribute[0].i = TensorProto.DOUBLE  # same output name, another computation
    with pytest.raises(ConversionError, match="computes 'w_cast_to_fp32' twice"):
        dedupe_nodes(clash.graph)


def test_initializer_value_info_is_dropped_and_the_rest_kept(tmp_path):
    model = _doubled_cast_graph()
    dedupe_nodes(model.graph)
    model.graph.value_info.extend([helper.make_tensor_value_info("w", TensorProto.FLOAT16, [3]),
                                   helper.make_tensor_value_info("a", TensorProto.FLOAT, [3])])
    onnx.save(model, str(tmp_path / "in.onnx"))
    drop_weight_value_info(tmp_path / "in.onnx", tmp_path / "out.onnx")
    assert [v.name for v in onnx.load(str(tmp_path / "out.onnx")).graph.value_info] == ["a"]
