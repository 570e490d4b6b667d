"""The profile validators on QDQ ONNX that qpass did not write: models made by hand with
onnx.helper, and ONNX Runtime's own quantize_static output."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper as h
from onnx import numpy_helper as nh
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from qpass.export import ExportValidationError, check, validate

T = onnx.TensorProto
RNG = np.random.default_rng(0)


def _mlp_qdq(*, zp: int = 0, weight_axis: int = 1, output_q: bool = False, opset: int = 21):
    """x -> Q/DQ -> MatMul(DQ(W int8 per channel)) [-> Q/DQ] -> y, with names to look for."""
    w = RNG.integers(-127, 128, size=(16, 8)).astype(np.int8)
    n_scales = w.shape[weight_axis]
    init = [nh.from_array(w, "w"), nh.from_array(np.full(n_scales, 0.02, np.float32), "w_s"),
            nh.from_array(np.zeros(n_scales, np.int8), "w_zp"),
            nh.from_array(np.array(0.05, np.float32), "x_s"),
            nh.from_array(np.array(zp, np.int8), "x_zp")]
    nodes = [h.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"], name="x_q"),
             h.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xd"], name="x_dq"),
             h.make_node("DequantizeLinear", ["w", "w_s", "w_zp"], ["wd"], name="w_dq",
                         axis=weight_axis),
             h.make_node("MatMul", ["xd", "wd"], ["mm" if output_q else "y"], name="fc")]
    if output_q:
        init += [nh.from_array(np.array(0.1, np.float32), "y_s"),
                 nh.from_array(np.array(zp, np.int8), "y_zp")]
        nodes += [h.make_node("QuantizeLinear", ["mm", "y_s", "y_zp"], ["yq"], name="y_q"),
                  h.make_node("DequantizeLinear", ["yq", "y_s", "y_zp"], ["y"], name="y_dq")]
    graph = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", T.FLOAT, [4, 16])],
                         [h.make_tensor_value_info("y", T.FLOAT, [4, 8])], init)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _by_rule(violations):
    out = {}
    for v in violations:
        out.setdefault(v.rule, set()).add(v.node)
    return out


def test_tensorrt_accepts_symmetric_input_quantized_qdq():
    model = _mlp_qdq()
    assert validate(model, "tensorrt") == []
    assert check(model, "tensorrt") == []
    ort.InferenceSession(model.SerializeToString())  # a valid model, not just a quiet validator


def test_tensorrt_rejects_asymmetric_output_quantized_model_naming_the_nodes():
    model = _mlp_qdq(zp=5, weight_axis=0, output_q=True)
    found = _by_rule(validate(model, "tensorrt"))
    assert found["tensorrt.symmetric"] == {"x_q", "x_dq", "y_q", "y_dq"}
    assert found["tensorrt.output_qdq"] == {"y_q"}
    assert found["tensorrt.weight_axis"] == {"w_dq"}
    with pytest.raises(ExportValidationError, match=r"'y_q' \(QuantizeLinear\): quantizes the "
                       r"output of 'fc' \(MatMul\)") as info:
        check(model, "tensorrt")
    assert "zero point 'x_zp' is 5" in str(info.value)
    assert "axis 0; TensorRT needs the output-channel axis (axis 1" in str(info.value)


class _Reader(CalibrationDataReader):
    def __init__(self):
        self.batches = iter([{"x": RNG.standard_normal((4, 16)).astype(np.float32)}
                             for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


def _fp32_mlp(path):
    init = [nh.from_array(RNG.standard_normal((16, 32)).astype(np.float32), "w1"),
            nh.from_array(RNG.standard_normal(32).astype(np.float32), "b1"),
            nh.from_array(RNG.standard_normal((32, 8)).astype(np.float32), "w2")]
    nodes = [h.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             h.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
             h.make_node("Relu", ["hb"], ["r"], name="relu"),
             h.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", T.FLOAT, [4, 16])],
                         [h.make_tensor_value_info("y", T.FLOAT, [4, 8])], init)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


@pytest.mark.filterwarnings("ignore")
def test_validators_on_onnxruntime_quantize_static_output(tmp_path):
    fp32 = _fp32_mlp(tmp_path / "fp32.onnx")
    u8 = tmp_path / "u8.onnx"
    quantize_static(str(fp32), str(u8), _Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    trt = _by_rule(validate(u8, "tensorrt"))
    assert {"x_QuantizeLinear", "h_QuantizeLinear"} <= trt["tensorrt.types"]
    assert "x_QuantizeLinear" in trt["tensorrt.symmetric"]  # asymmetric uint8 activations
    assert trt["tensorrt.output_qdq"] == {"h_QuantizeLinear", "y_QuantizeLinear"}
    ort_found = validate(u8, "ort")
    assert {v.severity for v in ort_found} == {"warning"}  # it loads; U8S8 may saturate
    assert _by_rule(ort_found)["ort.u8s8"] == {"fc1", "fc2"}

    s8 = tmp_path / "s8.onnx"
    quantize_static(str(fp32), str(s8), _Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    # symmetric int8 fixes everything but ORT's habit of quantizing MatMul outputs
    assert set(_by_rule(validate(s8, "tensorrt"))) == {"tensorrt.output_qdq"}


def test_opset_too_low_for_the_scales_or_types():
    per_channel_at_12 = _mlp_qdq(opset=12)
    assert _by_rule(validate(per_channel_at_12, "plain")) == {"qdq.opset": {"w_dq"}}
    w = nh.from_array(np.zeros((32, 8), np.int8), "w")
    int4 = onnx.helper.make_tensor("zp", T.INT4, [2, 8], [0] * 16)
    nodes = [h.make_node("DequantizeLinear", ["w", "s", "zp"], ["y"], name="w4",
                         axis=0, block_size=16)]
    graph = h.make_graph(nodes, "g", [], [h.make_tensor_value_info("y", T.FLOAT, [32, 8])],
                         [w, nh.from_array(np.ones((2, 8), np.float32), "s"), int4])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 19)])
    found = validate(model, "tensorrt")
    assert [(v.rule, v.node) for v in found if v.rule == "qdq.opset"] == [("qdq.opset", "w4")]
    assert "need opset 21 or newer; the model declares opset 19" in str(found[0])
    assert _by_rule(found)["qdq.zero_point_type"] == {"w4"}  # int8 data, int4 zero point


def test_tensorrt_rejects_run_time_quantization_and_q_without_dq():
    nodes = [h.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dyn"),
             h.make_node("MatMulInteger", ["xq", "w", "xz"], ["acc"], name="mmi"),
             h.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q_out")]
    init = [nh.from_array(np.zeros((16, 8), np.uint8), "w"),
            nh.from_array(np.array(0.1, np.float32), "s"), nh.from_array(np.int8(0), "z")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [4, 16])],
                         [h.make_tensor_value_info("acc", T.INT32, [4, 8]),
                          h.make_tensor_value_info("y", T.INT8, [4, 16])], init)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    found = _by_rule(validate(model, "tensorrt"))
    assert found["tensorrt.ops"] == {"dyn", "mmi"}
    assert found["tensorrt.q_then_dq"] == {"q_out"}


def _fp8_mlp(zero_point: bool = True):
    f8 = T.FLOAT8E4M3FN
    init = [onnx.helper.make_tensor("w", f8, [16, 8], RNG.standard_normal(128).tolist()),
            nh.from_array(np.full(8, 0.1, np.float32), "w_s"),
            onnx.helper.make_tensor("w_zp", f8, [8], [0.0] * 8),
            nh.from_array(np.array(0.05, np.float32), "x_s"),
            onnx.helper.make_tensor("x_zp", f8, [], [0.0])]
    nodes = [h.make_node("Relu", ["x"], ["r"], name="relu"),
             h.make_node("QuantizeLinear", ["r", "x_s", "x_zp"], ["xq"], name="x_q"),
             h.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xd"], name="x_dq"),
             h.make_node("DequantizeLinear", ["w", "w_s", "w_zp"], ["wd"], name="w_dq", axis=1),
             h.make_node("MatMul", ["xd", "wd"], ["y"], name="fc")]
    graph = h.make_graph(nodes, "fp8", [h.make_tensor_value_info("x", T.FLOAT, [4, 16])],
                         [h.make_tensor_value_info("y", T.FLOAT, [4, 8])], init)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def test_ort_rules_catch_what_onnxruntime_gets_wrong_with_fp8():
    model = _fp8_mlp()
    found = _by_rule(validate(model, "ort"))
    assert found == {"ort.fp8_matmul": {"fc"}, "ort.relu_q": {"x_q"}}
    assert validate(model, "tensorrt") == []  # fine for TensorRT
    # the rule is real: ONNX Runtime's optimizer fuses this fp8 MatMul into
    # MatMulIntegerToFloat, which 1.31 refuses to load and 1.32 loads and computes wrongly
    x = RNG.standard_normal((4, 16)).astype(np.float32)
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(model.SerializeToString(), plain,
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    try:
        fused = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        assert "MatMulIntegerToFloat" in str(exc)
    else:
        got = fused.run(None, {"x": x})[0]
        assert np.abs(got - want).max() > 0.1 * np.abs(want).max()


def test_validate_says_what_it_needs():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        validate("/nonexistent/model.onnx", "ort")
    with pytest.raises(ValueError, match="Known export profiles: ort, plain, tensorrt"):
        validate(_mlp_qdq(), "tensorrt10")
