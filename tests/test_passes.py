"""The pass framework: stages, recipe round-trip, errors that name the pass or policy."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import qpass
from qpass.passes import PASSES, Pass, PassResult
from qpass.policy import POLICIES, Policy


@dataclass(frozen=True)
class ScaleWeights(Pass):
    """Test pass: multiplies every linear weight by ``factor`` (changes the function)."""

    factor: float = 2.0
    stage = "float"
    needs_data = True

    def __call__(self, gm, ctx):
        assert ctx.precisions is None and len(ctx.batches) == 2
        for site in qpass.quantizable.find_sites(gm):
            w = qpass.quantizable.fetch_attr(gm, str(site.weight_node.target))
            w.mul_(self.factor)
        return PassResult(gm, True, {"factor": self.factor})


@dataclass(frozen=True)
class Broken(Policy):
    def assign(self, sites, ctx):
        raise ZeroDivisionError("boom")


@pytest.fixture(autouse=True)
def _registered():
    PASSES.add("test_scale_weights", ScaleWeights)
    POLICIES.add("test_broken", Broken)
    yield
    PASSES.unregister("test_scale_weights")
    POLICIES.unregister("test_broken")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def test_float_pass_runs_before_observers_and_reports():
    model, x = _model(), torch.randn(3, 8)
    recipe = qpass.resolve_recipe("w8a16").replace(passes=(ScaleWeights(3.0),))
    prepared = qpass.prepare(model, recipe, (x,), calib_data=[x, x])
    state = prepared.meta["qpass"]
    assert state.reports["passes"]["test_scale_weights"] == {"factor": 3.0}
    x2 = torch.randn(3, 8)
    # both weights tripled: ReLU is positively homogeneous, so the output is 9x (bias aside)
    expected = torch.nn.Sequential(*[m for m in _model()])
    with torch.no_grad():
        for m in (expected[0], expected[2]):
            m.weight.mul_(3.0)
    torch.testing.assert_close(prepared(x2), expected(x2))
    torch.testing.assert_close(model(x2), _model()(x2))  # the user's model is untouched


def test_pass_without_data_is_a_clear_error():
    recipe = qpass.resolve_recipe("w8a16").replace(passes=(ScaleWeights(),))
    with pytest.raises(ValueError, match="test_scale_weights.*needs calibration data"):
        qpass.prepare(_model(), recipe, (torch.randn(3, 8),))


def test_recipe_with_passes_and_policies_round_trips():
    recipe = qpass.resolve_recipe("w8a8_static").replace(
        passes=(ScaleWeights(0.5),), policies=(Broken(),))
    d = recipe.to_dict()
    assert d["passes"] == [{"type": "test_scale_weights", "factor": 0.5}]
    assert qpass.Recipe.from_dict(d) == recipe


def test_recipe_rejects_unknown_pass_field_with_closest_match():
    d = qpass.resolve_recipe("w8a16").to_dict()
    d["passes"] = [{"type": "test_scale_weights", "factr": 2.0}]
    with pytest.raises(ValueError, match=r"recipe.passes\[0\].factr.*did you mean 'factor'"):
        qpass.Recipe.from_dict(d)


def test_recipe_rejects_non_pass_items():
    with pytest.raises(ValueError, match="Recipe.passes"):
        qpass.resolve_recipe("w8a16").replace(passes=("smoothquant",))


def test_policy_that_raises_names_the_plugin():
    recipe = qpass.resolve_recipe("w8a16").replace(policies=(Broken(),))
    with pytest.raises(RuntimeError, match="policy 'test_broken'.*ZeroDivisionError: boom"):
        qpass.prepare(_model(), recipe, (torch.randn(3, 8),))
