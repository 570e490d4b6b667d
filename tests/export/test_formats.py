"""Formats in the exported file: packed int4 that ONNX Runtime turns into MatMulNBits, fp8
that ONNX Runtime runs exactly under the ort profile, opsets, float islands, external data."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import qpass
from qpass.config import LayerPrecision, PerGroup, QuantSpec
from qpass.export import onnx_export, validate
from tests.toy_models import tiny_lm, token_batches

W4_G16 = qpass.Recipe("w4a16_g16", LayerPrecision(QuantSpec("int4", granularity=PerGroup(16))))


def _optimized(path, tmp_path):
    """An ORT session with every optimization, and the graph it actually runs."""
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return session, ops


def _assert_matches(session, q, batches):
    for ids in batches:
        got = session.run(None, {session.get_inputs()[0].name: ids.numpy()})[0]
        np.testing.assert_allclose(got, q(ids).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_int4_weights_are_packed_and_run_as_matmulnbits(tmp_path):
    batches = token_batches(3)
    q = qpass.quantize(tiny_lm(), W4_G16, [], (batches[0],), progress=False)
    path = qpass.export_onnx(q, (batches[0],), tmp_path / "w4.onnx", profile="ort")
    int4 = [t for t in onnx.load(path).graph.initializer if t.data_type == onnx.TensorProto.INT4]
    weights = sorted(tuple(t.dims) for t in int4 if len(t.raw_data) > 64)
    assert weights == [(32, 64), (64, 32)]  # up and down as [K, N]
    assert all(len(t.raw_data) == np.prod(t.dims) // 2 for t in int4)  # two values a byte
    session, ops = _optimized(path, tmp_path)
    assert ops["MatMulNBits"] == 2 and ops["DequantizeLinear"] == 0
    _assert_matches(session, q, batches)


def test_fp8_runs_exactly_in_onnxruntime_under_the_ort_profile(tmp_path):
    batches = token_batches(3)
    q = qpass.quantize(tiny_lm(), "fp8_e4m3", batches, (batches[0],), progress=False)
    path = qpass.export_onnx(q, (batches[0],), tmp_path / "fp8.onnx", profile="ort")
    assert validate(path, "ort") == []
    types = {t.data_type for t in onnx.load(path).graph.initializer if len(t.dims) == 2}
    assert onnx.TensorProto.FLOAT8E4M3FN in types  # the file keeps float8 weights
    session, ops = _optimized(path, tmp_path)
    assert ops["Relu"] == 1  # ORT keeps the Relu in front of the float8 QuantizeLinear
    _assert_matches(session, q, batches)


def test_opset_is_checked_against_the_formats(tmp_path):
    ids = token_batches(1)[0]
    q8 = qpass.quantize(tiny_lm(), "w8a16", [], (ids,), progress=False)
    path = qpass.export_onnx(q8, (ids,), tmp_path / "o19.onnx", opset=19)
    assert onnx.load(path).opset_import[0].version == 19
    _assert_matches(_optimized(path, tmp_path)[0], q8, [ids])
    q4 = qpass.quantize(tiny_lm(), W4_G16, [], (ids,), progress=False)
    with pytest.raises(ValueError, match=r"opset=19 cannot express int4 weights .* need opset "
                       r"21: 2 quantized layer\(s\), e.g. 'up'"):
        qpass.export_onnx(q4, (ids,), tmp_path / "w4.onnx", opset=19)
    q_fp8 = qpass.quantize(tiny_lm(), "fp8_e4m3", [(ids,)], (ids,), progress=False)
    with pytest.raises(ValueError, match=r"opset=18 cannot express fp8_e4m3 .* need opset 19"):
        qpass.export_onnx(q_fp8, (ids,), tmp_path / "fp8.onnx", opset=18)
    with pytest.raises(ValueError, match=r"opset=13 is not valid; allowed: 18 to 21"):
        qpass.export_onnx(q8, (ids,), tmp_path / "o13.onnx", opset=13)
    assert not (tmp_path / "w4.onnx").exists() and not (tmp_path / "o13.onnx").exists()


@pytest.mark.parametrize("profile", ["ort", "plain", "tensorrt"])
def test_float_islands_from_policies_survive_export(tmp_path, profile):
    batches = token_batches(3)
    recipe = qpass.resolve_recipe("w8a8_static")
    recipe = recipe.replace(keep_float=(*recipe.keep_float, "down"))
    q = qpass.quantize(tiny_lm(), recipe, batches, (batches[0],), progress=False)
    path = qpass.export_onnx(q, (batches[0],), tmp_path / "m.onnx", profile=profile)
    proto = onnx.load(path)
    assert [v for v in validate(proto, profile) if v.severity == "error"] == []
    dq_inputs = {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    assert any("up_weight" in i for i in dq_inputs)
    assert not any("down" in i for i in dq_inputs)  # down stays a float MatMul
    meta = {p.key: p.value for p in proto.metadata_props}
    assert '"down"' in meta["qpass.float_sites"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    _assert_matches(ort.InferenceSession(str(path), so), q, batches)


@pytest.mark.parametrize("profile", ["ort", "plain", "tensorrt"])
def test_external_data_for_every_profile(tmp_path, monkeypatch, profile):
    batches = token_batches(2)
    q = qpass.quantize(tiny_lm(), W4_G16, [], (batches[0],), progress=False)
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    path = qpass.export_onnx(q, (batches[0],), tmp_path / "ext.onnx", profile=profile)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(".*tmp"))
    assert validate(path, profile) == []
    _assert_matches(_optimized(path, tmp_path)[0], q, batches)


class _Mlp(torch.nn.Module):
    """A Llama-sized MLP input (576 = 4 x 128 + 64) and a layer narrower than one group."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(576, 1536)
        self.down = torch.nn.Linear(1536, 64)
        self.head = torch.nn.Linear(64, 8)

    def forward(self, x):
        return self.head(self.down(torch.relu(self.up(x))))


@pytest.mark.parametrize("symmetric", [True, False])
def test_real_sized_int4_groups_pack_and_run_as_matmulnbits(tmp_path, symmetric):
    # torch.onnx leaves a large zero point as Cast(initializer); export folds it, so every
    # weight is packed (the ort validator refuses INT8 weights with an INT4 zero point)
    torch.manual_seed(0)
    spec = QuantSpec("int4", symmetric=symmetric, granularity=PerGroup(128))
    recipe = qpass.Recipe("w4_g128", LayerPrecision(spec), keep_float=())
    x = torch.randn(2, 7, 576)
    q = qpass.quantize(_Mlp().eval(), recipe, [(x,)], (x,), progress=False)
    path = qpass.export_onnx(q, (x,), tmp_path / "w4.onnx", profile="ort")
    model = onnx.load(path)
    int4 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 3 and all(n.input[0] in int4 and n.input[2] in int4 for n in dqs)
    session, ops = _optimized(path, tmp_path)
    assert ops["MatMulNBits"] == 3 and ops["DequantizeLinear"] == 0
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, q(x).detach().numpy(), rtol=1e-4, atol=1e-4)
