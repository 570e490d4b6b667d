"""The sensitivity policy: its linearized score against the one-at-a-time measure it stands
for, the worst-k and budget selections, its report and bad input."""

import pytest
import torch
from torch import nn

import qpass
from qpass.policies import Sensitivity


class Deep(nn.Module):
    """Six residual layers whose quantization error differs by orders of magnitude."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(6))
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                layer.weight.mul_(0.2 * (i + 1))
                layer.weight[:, i] *= 8.0 * (i % 3)  # an outlier weight column stretches scales

    def forward(self, x):
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
        return x


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 16, generator=g)
    x[:, 3] *= 6.0  # an outlier input channel stretches the static activation range
    return x


def _one_at_a_time(model, x, recipe):
    """The measure the policy approximates: ||y_i - y||^2 / ||y||^2, site i quantized alone."""
    names = [f"layers.{i}" for i in range(6)]
    with torch.no_grad():
        y = model(x)
        out = {}
        for name in names:
            r = recipe.replace(keep_float=tuple(n for n in names if n != name))
            yq = qpass.quantize(model, r, [x], (x,), progress=False)(x)
            out[name] = float((yq - y).pow(2).sum() / y.pow(2).sum())
    return out


def _spearman(a, b):
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@pytest.mark.parametrize("recipe", ["w8a8_static", "w8a8_dynamic"])
def test_score_ranks_layers_like_quantizing_them_one_at_a_time(recipe):
    x = _data()
    model = qpass.capture(Deep().eval(), (x,))  # captured once, for the seven prepares below
    base = qpass.resolve_recipe(recipe)
    true = _one_at_a_time(model, x, base)
    r = base.replace(policies=(Sensitivity(keep_worst=2, probes=256),))
    state = qpass.prepare(model, r, (x,), calib_data=[x]).meta["qpass"]
    rows = state.reports["policies"]["sensitivity"]["ranking"]
    proxy = {row["fqn"]: row["score"] for row in rows}
    names = sorted(true)
    assert _spearman([true[n] for n in names], [proxy[n] for n in names]) > 0.9
    for n in names:  # first order and 256 probes: within 30% of the one-at-a-time figure
        assert proxy[n] == pytest.approx(true[n], rel=0.3)
    worst = sorted(true, key=true.get)[-2:]
    precs = {state.fqns[k]: p for k, p in state.precisions.items()}
    assert {n for n, p in precs.items() if p.is_float} == set(worst)
    assert precs[worst[-1]].reason.startswith("sensitivity rank 1 of 6")


def test_budget_keeps_the_worst_layers_that_fit():
    x = _data()
    model = qpass.capture(Deep().eval(), (x,))
    r = qpass.resolve_recipe("w8a8_static").replace(
        policies=(Sensitivity(float_budget=0.34, probes=64),))
    state = qpass.prepare(model, r, (x,), calib_data=[x]).meta["qpass"]
    report = state.reports["policies"]["sensitivity"]
    ranked = [row["fqn"] for row in report["ranking"]]
    kept = [row["fqn"] for row in report["ranking"] if row["float"]]
    assert kept == ranked[:2]  # each layer is 1/6 of the weights: two fit in 34%
    assert report["float_weight_fraction"] == pytest.approx(2 / 6)
    r0 = qpass.resolve_recipe("w8a8_static").replace(policies=(Sensitivity(float_budget=0.0),))
    state = qpass.prepare(model, r0, (x,), calib_data=[x]).meta["qpass"]
    assert not any(p.is_float for p in state.precisions.values())


def test_sensitivity_bad_input_names_the_field():
    with pytest.raises(ValueError, match=r"Sensitivity.keep_worst=None.*exactly one"):
        Sensitivity()
    with pytest.raises(ValueError, match=r"Sensitivity.keep_worst=2.*exactly one"):
        Sensitivity(keep_worst=2, float_budget=0.1)
    with pytest.raises(ValueError, match=r"Sensitivity.float_budget=1.5.*between 0 and 1"):
        Sensitivity(float_budget=1.5)
    with pytest.raises(ValueError, match=r"Sensitivity.keep_worst=-1.*non-negative"):
        Sensitivity(keep_worst=-1)
    with pytest.raises(ValueError, match=r"Sensitivity.probes=0.*positive integer"):
        Sensitivity(keep_worst=1, probes=0)
    r = qpass.resolve_recipe("w8a16").replace(policies=(Sensitivity(keep_worst=1),))
    with pytest.raises(RuntimeError, match=r"policy 'sensitivity'.*got none.*calib_data"):
        qpass.prepare(Deep(), r, (_data(),))
