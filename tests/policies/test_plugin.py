"""A policy from another package, found through the ``qpass.policies`` entry point
(``examples/qpass_policy_example``, installed by ``scripts/install.sh test``)."""

import os
from importlib import metadata

import pytest
import torch

import qpass
from qpass.policy import POLICIES
from tests.toy_models import tiny_lm, token_batches


@pytest.fixture(scope="module")
def plugin():
    eps = [e for e in metadata.entry_points(group="qpass.policies")
           if e.name == "first_last_float"]
    if not eps:
        reason = ("the example plugin is not installed: pip install --no-deps -e "
                  "examples/qpass_policy_example")
        if os.environ.get("CI"):
            pytest.fail(reason + " (scripts/install.sh test does it)")
        pytest.skip(reason)
    return eps[0]


class Stack(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def _recipe(policy: dict):
    d = qpass.resolve_recipe("w8a8_dynamic").to_dict()
    return qpass.Recipe.from_dict({**d, "policies": [policy]})


def test_plugin_policy_is_found_by_name_and_round_trips(plugin):
    recipe = _recipe({"type": "first_last_float", "first": 1, "last": 1})
    cls = POLICIES.get("first_last_float")
    assert cls is plugin.load() and type(recipe.policies[0]) is cls
    assert recipe.to_dict()["policies"] == [{"type": "first_last_float", "first": 1, "last": 1}]
    x = torch.randn(3, 8)
    q = qpass.quantize(Stack(), recipe, [], (x,), progress=False)
    rows = {r["fqn"]: r for r in qpass.precision_report(q)}
    assert [f for f, r in rows.items() if r["float"]] == ["layers.0", "layers.3"]
    assert rows["layers.0"]["assigned_by"] == ["uniform", "first_last_float"]
    with torch.no_grad():
        err = (q(x) - Stack()(x)).abs().max()
    assert 0 < err < 0.05


def test_plugin_policy_that_raises_gives_an_error_naming_the_plugin(plugin):
    recipe = _recipe({"type": "first_last_float", "first": 2, "last": 1})
    ids = token_batches(1)[0]
    with pytest.raises(RuntimeError, match=r"precision policy 'first_last_float' "
                                           r"\(qpass_policy_example.FirstLastFloat\) raised "
                                           r"ValueError: first=2 \+ last=1 would keep all 2"):
        qpass.prepare(tiny_lm(), recipe, (ids,))


def test_plugin_config_is_validated(plugin):
    with pytest.raises(ValueError, match=r"FirstLastFloat.last=-1.*non-negative"):
        _recipe({"type": "first_last_float", "last": -1})
