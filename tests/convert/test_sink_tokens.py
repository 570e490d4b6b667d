"""Static activations with sink tokens: convert's graph, its numbers, and its ONNX export."""

import collections

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.export import Dim

import qpass
from qpass import numerics
from qpass.config import LayerPrecision, QuantSpec, Recipe
from qpass.eval.ort import ort_session
from qpass.recipes import INT8_WEIGHT
from tests.toy_models import tiny_lm, token_batches


class SinkMLP(nn.Module):
    """x -> up -> relu -> down, whose input's first token carries a massive activation."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def _inputs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(2, 12, 16, generator=g) for _ in range(n)]
    for x in xs:
        x[:, 0, 5] = 400.0  # the sink token
    return xs


def _recipe(sink: int) -> Recipe:
    act = QuantSpec("int8", symmetric=True, observer="minmax", sink_tokens=sink)
    return Recipe(f"sink{sink}", LayerPrecision(INT8_WEIGHT, act))


def _fq(x, lo, hi):
    scale, zp = numerics.qparams_from_range(lo, hi, numerics.FORMATS["int8"], True)
    return numerics.fake_quantize(x, scale, zp, numerics.FORMATS["int8"]).double()


def _reference(model, xs, x):
    """float64: each layer's input quantized with the range of its first token over the
    calibration data on the first token, and the rest's range on the rest."""
    def act_ranges(acts):
        head = torch.cat([a[:, :1] for a in acts])
        tail = torch.cat([a[:, 1:] for a in acts])
        return (head.min(), head.max()), (tail.min(), tail.max())

    def layer(lin, acts, a):
        (h_lo, h_hi), (t_lo, t_hi) = act_ranges(acts)
        a_q = torch.cat([_fq(a[:, :1], h_lo, h_hi), _fq(a[:, 1:], t_lo, t_hi)], dim=1)
        w = lin.weight.detach()
        s = w.abs().amax(1, keepdim=True) / 127
        w_q = (torch.clamp(torch.round(w / s), -127, 127) * s).double()
        return a_q @ w_q.T + lin.bias.detach().double()

    with torch.no_grad():
        hs = [torch.relu(model.up(c)) for c in xs]
        h = torch.relu(layer(model.up, xs, x)).float()
        return layer(model.down, hs, h)


def test_converted_sink_graph_matches_a_float64_reference_and_beats_one_scale():
    model, xs = SinkMLP().eval(), _inputs()
    q = qpass.quantize(model, _recipe(1), xs, (xs[0],), progress=False)
    q0 = qpass.quantize(model, _recipe(0), xs, (xs[0],), progress=False)
    quantizes = [n for n in q.graph.nodes if n.target == torch.ops.qpass.quantize.default]
    assert len(quantizes) == 4  # (sink, rest) for each of up and down; weights are int8
    x = _inputs(1, seed=7)[0]
    want = _reference(model, xs, x)
    got = q(x).double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    ref = model(x).detach().double()
    err = (got - ref)[:, 1:].norm() / ref[:, 1:].norm()
    err0 = (q0(x).double() - ref)[:, 1:].norm() / ref[:, 1:].norm()
    assert err < err0 / 5, (float(err), float(err0))


@pytest.mark.parametrize("profile", ["ort", "plain"])
def test_sink_export_runs_in_onnxruntime_for_any_length(tmp_path, profile):
    model, ids = tiny_lm(), token_batches(1)[0]
    dims = ({0: Dim("batch", min=1, max=64), 1: Dim("seq", min=2, max=512)},)
    q = qpass.quantize(model, _recipe(1), token_batches(3), (ids,), dynamic_shapes=dims,
                       progress=False)
    path = qpass.export_onnx(q, (ids,), tmp_path / "sink.onnx", dynamic_shapes=dims,
                             profile=profile)
    ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    assert ops["QuantizeLinear"] == 4  # (sink, rest) for each of up and down
    session = ort_session(path, threads=1)
    for shape in [(1, 2), (3, 17), (2, 40)]:
        x = torch.randint(0, 50, shape)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, q(x).detach().numpy(), rtol=1e-4, atol=1e-4)
