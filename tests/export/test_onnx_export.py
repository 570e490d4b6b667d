"""QDQ ONNX export of converted toy models: the ONNX graph, ORT parity, metadata."""

import collections
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import qpass
from qpass.export.ort_profile import int8_to_uint8
from tests.toy_models import tiny_lm, token_batches


def _session(path, profile="ort"):
    """An ORT session that computes what the graph says: MatMulNBits in fp32 (ORT's default
    accuracy level 4 would quantize activations of weight-only layers to int8). For the plain
    profile (int8 activations), ORT's own S8->U8 pass breaks on 3-D MatMul+Add (a
    TypeInferenceError); the ort profile exists to avoid it, so plain runs without that pass."""
    disabled = ["QDQS8ToU8Transformer"] if profile == "plain" else []
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled)


@pytest.mark.parametrize("recipe", ["w8a16", "w8a8_dynamic", "w8a8_static"])
@pytest.mark.parametrize("profile", ["ort", "plain"])
def test_export_runs_in_onnxruntime_and_matches_the_reference(tmp_path, recipe, profile):
    model = tiny_lm()
    batches = token_batches(4)
    q = qpass.quantize(model, recipe, batches, (batches[0],), progress=False)
    path = qpass.export_onnx(q, (batches[0],), tmp_path / f"{recipe}.onnx", profile=profile)
    proto = onnx.load(path)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    fused = recipe == "w8a8_dynamic" and profile == "ort"  # exact U8U8, see ort_lowering
    assert ops["MatMulIntegerToFloat"] == (2 if fused else 0)
    assert ops["DequantizeLinear"] == {"w8a16": 2, "w8a8_dynamic": 0 if fused else 4,
                                       "w8a8_static": 4}[recipe]
    assert ops["QuantizeLinear"] == {"w8a16": 0, "w8a8_dynamic": 2,  # fused: one per row
                                     "w8a8_static": 2}[recipe]
    assert ops["MatMul"] + ops["Gemm"] + ops["MatMulIntegerToFloat"] == 3
    weight_type = onnx.TensorProto.UINT8 if profile == "ort" else onnx.TensorProto.INT8
    integer_weights = [t.name for t in proto.graph.initializer
                       if t.data_type == weight_type and len(t.dims) == 2]
    assert len(integer_weights) == 2  # up and down; lm_head stays float
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["qpass.recipe"])["name"] == recipe
    assert meta["qpass.version"] == qpass.__version__
    assert proto.ir_version == 10
    session = _session(path, profile)
    for ids in batches:
        got = session.run(None, {session.get_inputs()[0].name: ids.numpy()})[0]
        want = q(ids).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_int8_to_uint8_is_bit_exact_for_q_and_dq():
    x = np.linspace(-3, 3, 97, dtype=np.float32).reshape(1, 97)
    w = np.arange(-128, 127, 2, dtype=np.int8)[:97].reshape(97, 1)
    h = onnx.helper
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             h.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
             h.make_node("MatMul", ["xd", "wd"], ["y"])]
    init = [onnx.numpy_helper.from_array(a, n) for n, a in [
        ("s", np.array(0.03, np.float32)), ("z", np.array(-5, np.int8)), ("w", w),
        ("ws", np.array([0.1], np.float32)), ("wz", np.array([3], np.int8))]]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", 1, [1, 97])],
                         [h.make_tensor_value_info("y", 1, [1, 1])], init)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(model.SerializeToString(), so).run(None, {"x": x})[0]
    assert int8_to_uint8(model) == 3
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert set(types.values()) == {onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8}
    shifted = ort.InferenceSession(model.SerializeToString(), so).run(None, {"x": x})[0]
    np.testing.assert_array_equal(shifted, plain)


def test_unknown_profile_is_rejected(tmp_path):
    ids = token_batches(1)[0]
    q = qpass.quantize(tiny_lm(), "w8a16", [], (ids,), progress=False)
    with pytest.raises(ValueError, match="Known export profiles: ort, plain, tensorrt"):
        qpass.export_onnx(q, (ids,), tmp_path / "m.onnx", profile="tensorrt-ish")


def test_float_model_exports_too(tmp_path):
    model = tiny_lm()
    ids = token_batches(1)[0]
    path = qpass.export_onnx(qpass.capture(model, (ids,)), (ids,), tmp_path / "fp32.onnx")
    got = _session(path).run(None, {"ids": ids.numpy()})[0]
    np.testing.assert_allclose(got, model(ids).detach().numpy(), rtol=1e-5, atol=1e-5)
    assert torch.is_tensor(model(ids))


@pytest.mark.parametrize("recipe", ["w8a16", "w8a8_dynamic", "w8a8_static"])
def test_dynamic_batch_and_sequence_axes(tmp_path, recipe):
    from torch.export import Dim

    from qpass.eval.ort import ort_session

    model, ids = tiny_lm(), token_batches(1)[0]
    dims = ({0: Dim("batch", min=1, max=64), 1: Dim("seq", min=2, max=512)},)
    q = qpass.quantize(model, recipe, token_batches(2), (ids,), dynamic_shapes=dims,
                       progress=False)
    path = qpass.export_onnx(q, (ids,), tmp_path / "dyn.onnx", dynamic_shapes=dims)
    session = ort_session(path, threads=1)
    assert session.get_inputs()[0].shape == ["batch", "seq"]
    for shape in [(1, 2), (3, 17), (5, 40)]:
        x = torch.randint(0, 50, shape)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, q(x).detach().numpy(), rtol=1e-4, atol=1e-4)
