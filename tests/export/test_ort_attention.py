"""The ort profile's attention cleanup: SDPA softmax NaN guards removed, outputs bit for bit."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import qpass
from qpass.export.ort_attention import remove_softmax_nan_guards


def _guarded_attention(fill: float, mask: np.ndarray) -> onnx.ModelProto:
    """What torch.onnx writes for SDPA with a boolean mask, by hand: q, k, v [1, 2, 4, 8]."""
    const = [numpy_helper.from_array(mask, "mask"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(fill, np.float32), "fill")]
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"]),
             helper.make_node("Where", ["mask", "zero", "fill"], ["bias"]),
             helper.make_node("Add", ["scores", "bias"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
             helper.make_node("IsNaN", ["p"], ["nan"]),
             helper.make_node("Where", ["nan", "zero", "p"], ["p_safe"]),
             helper.make_node("MatMul", ["p_safe", "v"], ["out"])]
    io = [helper.make_tensor_value_info(n, T.FLOAT, [1, 2, 4, 8]) for n in ("q", "k", "v")]
    graph = helper.make_graph(nodes, "sdpa", io,
                              [helper.make_tensor_value_info("out", T.FLOAT, [1, 2, 4, 8])], const)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("fill", [-np.inf, float(np.finfo(np.float32).min)])
def test_guards_go_and_every_output_stays_the_same(fill):
    mask = np.tril(np.ones((4, 4), bool))[None, None].copy()
    mask[..., 2, :] = False  # a fully masked row: NaN under -inf, which the guard zeroed
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for n in ("q", "k", "v")}
    model = _guarded_attention(fill, mask)
    want = _run(model, feeds)
    assert remove_softmax_nan_guards(model) == 1
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["IsNaN"] == 0
    onnx.checker.check_model(model)
    got = _run(model, feeds)
    np.testing.assert_array_equal(got, want)
    if fill == -np.inf:
        assert np.all(got[..., 2, :] == 0) and np.all(np.isfinite(got))


def test_unguarded_softmax_is_left_alone():
    model = _guarded_attention(-np.inf, np.ones((1, 1, 4, 4), bool))
    guard = next(n for n in model.graph.node if n.op_type == "Where" and n.input[0] == "nan")
    guard.input[1] = "fill"  # not a zero: some other computation, not the SDPA guard
    before = model.SerializeToString()
    assert remove_softmax_nan_guards(model) == 0
    assert model.SerializeToString() == before


class _Attention(torch.nn.Module):
    """Causal self-attention through F.scaled_dot_product_attention with a boolean mask."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qkv = torch.nn.Linear(16, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, 2, 8).permute(2, 0, 3, 1, 4)
        mask = torch.ones(s, s, dtype=torch.bool).tril()
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(b, s, 16)


def test_torch_exported_attention_loses_its_guards(tmp_path):
    model = _Attention().eval()
    x = torch.randn(2, 6, 16)
    plain = onnx.load(qpass.export_onnx(model, (x,), tmp_path / "plain.onnx", profile="plain"))
    fast = onnx.load(qpass.export_onnx(model, (x,), tmp_path / "ort.onnx", profile="ort"))
    count = collections.Counter(n.op_type for n in plain.graph.node)
    assert count["IsNaN"] == 1, "torch's exporter no longer writes the guard; update the rewrite"
    assert collections.Counter(n.op_type for n in fast.graph.node)["IsNaN"] == 0
    feeds = {plain.graph.input[0].name: x.numpy()}
    got, want = _run(fast, feeds), _run(plain, feeds)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)
