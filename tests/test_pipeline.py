"""prepare -> calibrate -> convert on toy models: the graph, the numbers, the errors."""

import pytest
import torch

import qpass
from qpass import numerics, ops
from qpass.config import LayerPrecision, QuantSpec, Recipe
from tests.toy_models import Functional, tiny_lm, token_batches

INT8 = numerics.FORMATS["int8"]


def _count(gm, target):
    return sum(n.target == target for n in gm.graph.nodes)


def _int8_per_channel_ref(w: torch.Tensor) -> torch.Tensor:
    """float64 reference of symmetric per-output-channel int8 fake quantization."""
    w = w.double()
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    return torch.clamp(torch.round(w / scale), -128, 127) * scale


@pytest.mark.parametrize("method", ["export", "symbolic_trace"])
def test_w8a16_matches_a_float64_reference(method):
    model = tiny_lm()
    ids = token_batches(1)[0]
    gm = qpass.capture(model, (ids,), method=method)
    q = qpass.quantize(gm, "w8a16", [], (ids,), progress=False)
    # graph: every quantized site reads int8 weights through DequantizeLinear
    assert _count(q, ops.DEQUANTIZE) == 2 and _count(q, ops.QUANTIZE) == 0
    int8 = {n for n, b in q.named_buffers() if b.dtype == torch.int8 and n.endswith("weight_q")}
    assert sorted(int8) == ["qpass_down_weight_q", "qpass_up_weight_q"]
    assert not hasattr(q, "up") or not hasattr(q.up, "weight")  # float weight dropped
    # numbers: same as the float model with weights fake-quantized in float64
    with torch.no_grad():
        h = model.embed(ids).double()
        up = h @ _int8_per_channel_ref(model.up.weight).T + model.up.bias.double()
        h = h + torch.relu(up) @ _int8_per_channel_ref(model.down.weight).T
        ref = h @ model.lm_head.weight.double().T  # lm_head stays float by default
    torch.testing.assert_close(q(ids).double(), ref, rtol=1e-5, atol=1e-5)


def test_w8a8_static_quantizes_activations_with_calibrated_minmax():
    model = tiny_lm()
    batches = token_batches(4)
    prepared = qpass.prepare(model, "w8a8_static", (batches[0],))
    observers = [m for n, m in prepared.named_modules() if n.startswith("qpass_observer")]
    assert len(observers) == 2
    qpass.calibrate(prepared, batches, progress=False)
    # the observer of `up` saw exactly the embedding outputs of the batches
    emb = torch.cat([model.embed(b).reshape(-1, 32) for b in batches])
    up_obs = next(m for m in observers if m.consumers == ("up",)).observer
    assert up_obs.lo.item() == emb.min().item() and up_obs.hi.item() == emb.max().item()
    q = qpass.convert(prepared)
    assert _count(q, ops.QUANTIZE) == 2 and _count(q, ops.DEQUANTIZE) == 4
    assert not any(n.startswith("qpass_observer_0") and "scale" not in n and "zero" not in n
                   for n, _ in q.named_modules())
    ids = batches[0]
    with torch.no_grad():
        rel = (q(ids) - model(ids)).norm() / model(ids).norm()
    assert rel < 0.02, rel
    # the prepared model is untouched by convert: it still observes and runs in float
    torch.testing.assert_close(prepared(ids), model(ids))


def _per_token_ref(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    s = x.abs().amax(-1, keepdim=True) / 127
    return torch.clamp(torch.round(x / s), -128, 127) * s


def test_w8a8_dynamic_quantizes_each_token_at_run_time():
    model = tiny_lm()
    ids = token_batches(1)[0]
    q = qpass.quantize(model, "w8a8_dynamic", [], (ids,), progress=False)
    assert _count(q, ops.CHOOSE_QPARAMS_PER_TOKEN) == 2
    with torch.no_grad():
        h = model.embed(ids).double()
        up = _per_token_ref(h) @ _int8_per_channel_ref(model.up.weight).T + model.up.bias.double()
        h = h + _per_token_ref(torch.relu(up)) @ _int8_per_channel_ref(model.down.weight).T
        ref = h @ model.lm_head.weight.double().T
    torch.testing.assert_close(q(ids).double(), ref, rtol=1e-4, atol=1e-4)


def test_functional_ops_all_quantize_and_match_float():
    torch.manual_seed(0)
    model = Functional()
    x = torch.randn(5, 8)
    q = qpass.quantize(model, "w8a8_dynamic", [], (x,), progress=False)
    assert _count(q, ops.CHOOSE_QPARAMS_PER_TOKEN) == 4
    rel = (q(x) - model(x)).norm() / model(x).norm()
    assert rel < 0.03, rel


def test_keep_float_and_custom_recipe():
    model = tiny_lm()
    ids = token_batches(1)[0]
    weight = QuantSpec("int8", granularity=qpass.PerChannel(0))
    recipe = Recipe("mine", LayerPrecision(weight=weight), keep_float=("up",))
    q = qpass.quantize(model, recipe, [], (ids,), progress=False)
    state = q.meta["qpass"]
    reasons = {state.fqns[n]: p.reason for n, p in state.precisions.items()}
    assert reasons["up"] == "keep_float pattern 'up'"
    assert _count(q, ops.DEQUANTIZE) == 2  # down and lm_head
    torch.testing.assert_close(q.up.weight, model.up.weight)


def test_all_zero_weight_gives_a_finite_exact_result():
    model = tiny_lm()
    with torch.no_grad():
        model.down.weight.zero_()
    ids = token_batches(1)[0]
    q = qpass.quantize(model, "w8a8_static", token_batches(2), (ids,), progress=False)
    assert torch.isfinite(q.qpass_down_weight_scale).all()
    assert q.qpass_down_weight_q.abs().sum() == 0
    out = q(ids)
    assert torch.isfinite(out).all()


# ---- bad input -----------------------------------------------------------------------------

def test_unknown_recipe_lists_the_known_ones():
    known = "w8a16, w8a8_dynamic, w8a8_dynamic_rotated, w8a8_dynamic_smoothquant, w8a8_static"
    with pytest.raises(KeyError, match=f"Known recipes: .*{known}"):
        qpass.prepare(tiny_lm(), "w8a8_statik", (token_batches(1)[0],))


def test_unknown_observer_in_a_recipe_lists_the_known_ones():
    act = QuantSpec(observer="percentil")
    recipe = Recipe("typo", LayerPrecision(weight=QuantSpec(), activation=act))
    with pytest.raises(KeyError, match=r"unknown observer 'percentil'.*Known observers: .*kl.*mse"):
        qpass.prepare(tiny_lm(), recipe, (token_batches(1)[0],))


def test_empty_calibration_data():
    prepared = qpass.prepare(tiny_lm(), "w8a8_static", (token_batches(1)[0],))
    with pytest.raises(qpass.CalibrationDataError, match="calibration data is empty"):
        qpass.calibrate(prepared, [], progress=False)


def test_calibration_batches_that_do_not_fit_the_example_inputs():
    prepared = qpass.prepare(tiny_lm(), "w8a8_static", (token_batches(1)[0],))
    with pytest.raises(qpass.CalibrationDataError, match=r"batch 1, input 0 has shape \[2, 5\]"):
        qpass.calibrate(prepared, token_batches(1) + token_batches(1, shape=(2, 5)),
                        progress=False)
    with pytest.raises(qpass.CalibrationDataError, match="has 2 input"):
        qpass.calibrate(prepared, [(token_batches(1)[0], token_batches(1)[0])], progress=False)
    with pytest.raises(qpass.CalibrationDataError, match="dtype torch.float32"):
        qpass.calibrate(prepared, [torch.zeros(2, 8)], progress=False)


def test_nan_in_calibration_activations_names_the_module():
    model = tiny_lm()
    with torch.no_grad():
        model.up.bias[3] = float("nan")  # up's output, i.e. down's input, holds NaN
    prepared = qpass.prepare(model, "w8a8_static", (token_batches(1)[0],))
    with pytest.raises(qpass.NonFiniteActivationError,
                       match=r"calibration batch 0: \d+ NaN/Inf value\(s\).*input of down"):
        qpass.calibrate(prepared, token_batches(2), progress=False)


def test_convert_before_calibrate_is_an_error():
    prepared = qpass.prepare(tiny_lm(), "w8a8_static", (token_batches(1)[0],))
    with pytest.raises(ValueError, match="was not calibrated"):
        qpass.convert(prepared)


def test_calibrate_needs_a_prepared_model():
    with pytest.raises(ValueError, match="returned by qpass.prepare"):
        qpass.calibrate(qpass.capture(tiny_lm(), (token_batches(1)[0],)), token_batches(1))
