"""bench_policies' row options build the recipes its README rows say."""

import qpass
from qpass.bench_policies import _args, _recipe
from qpass.policies.rules import Rules
from qpass.transform.hadamard import HadamardRotate


def test_static_row_options_set_the_sink_the_rotation_and_float_activations():
    a = _args(["smollm2", "--observer", "minmax", "--alpha", "0.5", "--budget", "0",
               "--sink-tokens", "1", "--hadamard", "128",
               "--float-activations", "*.mlp.down_proj"])
    r = _recipe("w8a8_static_smoothquant", a)
    assert r.precision.activation.sink_tokens == 1
    assert r.precision.activation.observer == "minmax"
    assert [type(p).__name__ for p in r.passes] == ["SmoothQuant", "HadamardRotate"]
    assert r.passes[0].alpha == 0.5 and r.passes[1] == HadamardRotate(block=128)
    rule = next(p for p in r.policies if isinstance(p, Rules)).rules[0]
    assert rule.fqn == "*.mlp.down_proj" and rule.precision.activation is None
    assert rule.precision.weight == r.precision.weight
    # dynamic rows keep per-token activations; presets are the built-in recipe as it is
    assert _recipe("w8a8_dynamic", a).precision.activation.sink_tokens == 0
    assert _recipe("w8a8_static_rotated", a) == qpass.resolve_recipe("w8a8_static_rotated")


def test_the_rotated_dynamic_preset_is_the_smoothquant_row_with_hadamard():
    # the README quotes w8a8_dynamic_rotated from `--rows w8a8_dynamic_smoothquant --hadamard 128`
    a = _args(["smollm2", "--hadamard", "128"])
    got = _recipe("w8a8_dynamic_smoothquant", a)
    want = qpass.resolve_recipe("w8a8_dynamic_rotated")
    assert got.passes == want.passes and got.precision == want.precision
    assert got.policies == want.policies and got.keep_float == want.keep_float
