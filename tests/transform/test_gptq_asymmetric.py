"""GPTQ's asymmetric calibration: each layer aimed at the float model's output, through the
cross term D = 2Xᵀ(X̃ - X)/n and the float target W + α W Dᵀ H⁻¹, against float64 references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qpass
from qpass.config import LayerPrecision, PerGroup, QuantSpec
from qpass.quantizable import find_sites
from qpass.transform.gptq import GPTQ
from qpass.transform.hessian import Hessian, float_target
from qpass.transform.layerwise import LayerwiseWalk
from tests.transform.test_gptq_solver import reference_gptq

SPEC = QuantSpec("int3", symmetric=False, granularity=PerGroup(32))


def _pair(tokens=400, k=48, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, k, generator=g, dtype=torch.float64)
    x_float = x + 0.2 * torch.randn(tokens, k, generator=g, dtype=torch.float64)
    w = torch.randn(n, k, generator=g, dtype=torch.float64) * 0.1
    return x, x_float, w


def test_cross_term_matches_a_float64_reference():
    x, x_float, _ = _pair()
    h = Hessian.empty(x.shape[1])
    for part, target in zip(x.split(100), x_float.split(100), strict=True):
        h.update(part.float().reshape(2, 50, -1), target=target.float().reshape(2, 50, -1))
    assert h.tokens == len(x)
    want = 2 * x.T @ (x_float - x) / len(x)
    torch.testing.assert_close(h.cross, want, rtol=1e-4, atol=1e-5)  # float32 products
    assert Hessian.empty(4).cross is None  # no target, no cross term


def test_float_target_at_alpha_one_is_the_least_squares_fit_to_the_float_outputs():
    x, x_float, w = _pair()
    hess, cross = 2 * x.T @ x / len(x), 2 * x.T @ (x_float - x) / len(x)
    got = float_target(w, hess, cross, 1.0, 0.0, 0.0, "layer", len(x))
    lstsq = torch.linalg.lstsq(x, x_float @ w.T).solution.T  # argmin ||X Vᵀ - X̃ Wᵀ||
    torch.testing.assert_close(got, lstsq, rtol=1e-9, atol=1e-10)
    # so for every Q, the float-target loss and GPTQ's loss on W' differ by one constant
    g = torch.Generator().manual_seed(3)
    gaps = []
    for _ in range(3):
        q = w + 0.05 * torch.randn(w.shape, generator=g, dtype=torch.float64)
        gaps.append((x_float @ w.T - x @ q.T).pow(2).sum() - (x @ got.T - x @ q.T).pow(2).sum())
    torch.testing.assert_close(torch.stack(gaps), gaps[0].expand(3), rtol=1e-9, atol=1e-8)
    # α blends linearly from the layer's own weight
    half = float_target(w, hess, cross, 0.5, 0.0, 0.0, "layer", len(x))
    torch.testing.assert_close(half, (w + lstsq) / 2, rtol=1e-9, atol=1e-10)
    assert torch.equal(float_target(w, hess, cross, 0.0, 0.0, 0.0, "layer", len(x)), w)


def test_float_target_names_the_layer_when_h_cannot_be_factored():
    k = 8
    with pytest.raises(ValueError, match=r"GPTQ: H \+ λI of mlp\.0 is not positive definite"):
        float_target(torch.ones(4, k), -torch.eye(k, dtype=torch.float64),
                     torch.zeros(k, k, dtype=torch.float64), 1.0, 0.0, 0.0, "mlp.0", 3)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32)).eval()


def _data(n=4, rows=80, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, 64, generator=g),) for _ in range(n)]


def test_advance_keeps_a_second_walk_level_and_refuses_a_foreign_node():
    gm = qpass.capture(_mlp(), _data(1)[0])
    batches = _data(2)
    sites = find_sites(gm)
    walk, shadow = LayerwiseWalk(gm, batches), LayerwiseWalk(gm, batches)
    seen = []

    def before(node):
        x = next(s for s in sites if s.node is node).activation_node
        shadow.advance(node)
        seen.append([torch.equal(a, b) for a, b in zip(walk.values(x), shadow.values(x),
                                                         strict=True)])
        shadow.advance(node, through=True)
        seen.append([torch.equal(a, b) for a, b in zip(walk.peek(node), shadow.values(node),
                                                         strict=True)])

    walk.run([s.node for s in sites], before)
    assert seen == [[True, True]] * 2 * len(sites)
    other = qpass.capture(_mlp(), _data(1)[0])
    with pytest.raises(ValueError, match=r"cannot reach .*not a node of the graph it walks"):
        shadow.advance(next(iter(other.graph.nodes)))
    shadow.close()


def _quantized(alpha, batches):
    model = _mlp()
    recipe = qpass.Recipe("w3 test", LayerPrecision(SPEC), passes=(GPTQ(asymmetric=alpha),))
    prepared = qpass.prepare(model, recipe, batches[0], calib_data=batches, progress=False)
    return model, prepared


def test_asymmetric_gptq_solves_the_last_layer_against_the_float_target():
    batches = _data()
    model, prepared = _quantized(1.0, batches)
    got = prepared.meta["qpass"].quantized_weights
    names = sorted(got)
    x = torch.cat([b[0] for b in batches]).double()
    w0 = got[names[0]].dequantize().double()  # [K, N]
    hid = torch.relu(x @ w0 + model[0].bias.double())  # the quantized model's input
    hid_float = torch.relu(x @ model[0].weight.detach().double().T + model[0].bias.double())
    h1 = 2 * hid.T @ hid / len(hid)
    d1 = 2 * hid.T @ (hid_float - hid) / len(hid)
    cfg = GPTQ(asymmetric=1.0)
    target = float_target(model[2].weight.detach().double(), h1, d1, 1.0, cfg.percdamp,
                          cfg.shrinkage, "2", len(hid))
    want, ties = reference_gptq(target.float(), h1, "int3", False, 32, shrinkage=cfg.shrinkage)
    same = (got[names[1]].q.T.long() == want).all(1)
    assert bool(same[~ties].all())
    assert int(same.sum()) >= 0.9 * len(same)


def test_asymmetric_gptq_is_closer_to_the_float_model_on_its_calibration_data():
    batches = _data(8)

    def error(alpha):
        model, prepared = _quantized(alpha, batches)
        q = qpass.convert(prepared)
        with torch.no_grad():
            return sum(float((q(*b) - model(*b)).pow(2).sum()) for b in batches)

    textbook, asymmetric = error(0.0), error(1.0)
    assert asymmetric < 0.9 * textbook, (asymmetric, textbook)


@pytest.mark.parametrize(("bad", "match"), [
    ({"asymmetric": 1.5}, r"GPTQ\.asymmetric=1\.5 is not valid"),
    ({"asymmetric": -0.1}, r"GPTQ\.asymmetric=-0\.1 is not valid")])
def test_invalid_asymmetric_config_says_what_to_change(bad, match):
    with pytest.raises(ValueError, match=match):
        GPTQ(**bad)
