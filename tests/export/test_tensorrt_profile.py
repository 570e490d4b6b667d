"""The tensorrt export profile on a toy LM: every format TensorRT has exports, passes the
tensorrt validator and computes what the torch reference computes; the others are refused."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qpass
from qpass.config import LayerPrecision, PerChannel, PerGroup, PerTensor, QuantSpec
from qpass.export import validate
from tests.toy_models import tiny_lm, token_batches

W4_G16 = qpass.Recipe("w4a16_g16", LayerPrecision(QuantSpec("int4", granularity=PerGroup(16))))
RECIPES = {"w8a16": "w8a16", "w8a8_static": "w8a8_static", "w4a16_g16": W4_G16,
           "fp8_e4m3": "fp8_e4m3"}
SIGNED = {onnx.TensorProto.INT8, onnx.TensorProto.INT4, onnx.TensorProto.FLOAT8E4M3FN}


def reference_session(path):
    """ONNX Runtime as a reference interpreter (TensorRT is not here): basic optimizations,
    none of its CPU QDQ fusions."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_tensorrt_export_passes_its_validator_and_matches_torch(tmp_path, name):
    batches = token_batches(4)
    q = qpass.quantize(tiny_lm(), RECIPES[name], batches, (batches[0],), progress=False)
    path = qpass.export_onnx(q, (batches[0],), tmp_path / "m.onnx", profile="tensorrt")
    assert validate(path, "tensorrt") == []
    proto = onnx.load(path)
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq, "the export quantizes something"
    inits = {t.name: t for t in proto.graph.initializer}
    for node in qdq:
        zp = onnx.numpy_helper.to_array(inits[node.input[2]])
        assert inits[node.input[2]].data_type in SIGNED and not zp.astype(float).any()
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["qpass.export_profile"] == "tensorrt"
    assert json.loads(meta["qpass.recipe"])["name"] == getattr(RECIPES[name], "name", name)
    session = reference_session(path)
    for ids in batches:
        got = session.run(None, {session.get_inputs()[0].name: ids.numpy()})[0]
        np.testing.assert_allclose(got, q(ids).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_w8a8_dynamic_is_refused_with_what_to_use_instead(tmp_path):
    ids = token_batches(1)[0]
    q = qpass.quantize(tiny_lm(), "w8a8_dynamic", [], (ids,), progress=False)
    with pytest.raises(ValueError, match=r"'tensorrt' does not support recipe 'w8a8_dynamic'"
                       r"[\s\S]*2 layer\(s\) \(up, down\) use dynamic \(per-token\) activation"
                       r"[\s\S]*use a static recipe \(w8a8_static[\s\S]*profile='ort'"):
        qpass.export_onnx(q, (ids,), tmp_path / "m.onnx", profile="tensorrt")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(("prec", "message"), [
    (LayerPrecision(QuantSpec("int8", symmetric=False, granularity=PerChannel(0))),
     "asymmetric weights: TensorRT needs zero point 0; set symmetric=True"),
    (LayerPrecision(QuantSpec("int8"), QuantSpec("uint8", symmetric=False)),
     "uint8 activations: TensorRT quantizes activations to int8, fp8_e4m3 only"),
    (LayerPrecision(QuantSpec("int4", granularity=PerTensor())),
     "int4 weights without groups: TensorRT runs int4 weights with blocked scales only"),
    (LayerPrecision(QuantSpec("int8", granularity=PerGroup(16))),
     "per-group int8 weights: TensorRT has blocked scales for int4 weights only"),
])
def test_formats_tensorrt_cannot_run_are_refused(tmp_path, prec, message):
    batches = token_batches(2)
    q = qpass.quantize(tiny_lm(), qpass.Recipe("r", prec), batches, (batches[0],),
                       progress=False)
    with pytest.raises(ValueError, match=message):
        qpass.export_onnx(q, (batches[0],), tmp_path / "m.onnx", profile="tensorrt")


def test_tensorrt_export_with_dynamic_batch_and_sequence(tmp_path):
    import torch
    from torch.export import Dim

    ids = token_batches(1)[0]
    dims = ({0: Dim("batch", min=1, max=64), 1: Dim("seq", min=2, max=512)},)
    q = qpass.quantize(tiny_lm(), W4_G16, [], (ids,), dynamic_shapes=dims, progress=False)
    path = qpass.export_onnx(q, (ids,), tmp_path / "dyn.onnx", dynamic_shapes=dims,
                             profile="tensorrt")
    session = reference_session(path)
    assert session.get_inputs()[0].shape == ["batch", "seq"]
    for shape in [(1, 2), (3, 17)]:
        x = torch.randint(0, 50, shape)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, q(x).detach().numpy(), rtol=1e-4, atol=1e-4)
