"""The GPTQ pass: layer by layer on the partially quantized model, integers handed to convert
unchanged, errors and warnings before any work is lost."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qpass
from qpass.config import LayerPrecision, PerChannel, PerGroup, QuantSpec
from qpass.transform.gptq import GPTQ
from tests.transform.test_gptq_solver import reference_gptq


def _recipe(spec: QuantSpec, *passes, keep_float=()) -> qpass.Recipe:
    return qpass.Recipe("w4 test", LayerPrecision(spec), keep_float=keep_float, passes=passes)


def _mlp(k=128, hidden=192, out=64, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(k, hidden), nn.ReLU(), nn.Linear(hidden, out)).eval()


def _data(n=4, rows=64, k=128, seed=1):
    """Correlated inputs (one fixed mixing matrix: held-out data is the same distribution)."""
    mix = torch.eye(k) + 0.3 * torch.randn(k, k, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, k, generator=g) @ mix,) for _ in range(n)]


def test_each_layer_is_solved_on_inputs_of_the_quantized_layers_before_it():
    model, batches = _mlp(), _data()
    spec = QuantSpec("int4", symmetric=False, granularity=PerGroup(32))
    cfg = GPTQ(asymmetric=0.0)  # each layer aimed at its own weights (test_gptq_asymmetric)
    prepared = qpass.prepare(model, _recipe(spec, cfg), batches[0], calib_data=batches,
                             progress=False)
    got = prepared.meta["qpass"].quantized_weights
    assert len(got) == 2
    # the reference: layer 0 from the float input, layer 1 from layer 0 *quantized*
    x = torch.cat([b[0] for b in batches]).double()
    h0 = 2 * x.T @ x / len(x)
    q0, ties0 = reference_gptq(model[0].weight.detach(), h0, "int4", False, 32,
                               shrinkage=cfg.shrinkage)
    first = qpass.convert(prepared)
    w0 = got[_site_names(prepared)[0]].dequantize().double()  # [K, N]
    hid = torch.relu(x @ w0 + model[0].bias.double())
    h1 = 2 * hid.T @ hid / len(hid)
    q1, ties1 = reference_gptq(model[2].weight.detach(), h1, "int4", False, 32,
                               shrinkage=cfg.shrinkage)
    for (name, qw), want, ties in zip(sorted(got.items()), (q0, q1), (ties0, ties1),
                                      strict=True):
        same = (qw.q.T.long() == want).all(1)
        assert bool(same[~ties].all()), name
    # convert stores exactly these integers, and the prepared graph computes with them
    stored = sorted(n for n, _ in first.named_buffers() if n.endswith("weight_q"))
    assert len(stored) == 2
    for name, qw in got.items():
        assert any(torch.equal(qw.q, b) for n, b in first.named_buffers() if n in stored), name
    xt = _data(1, seed=5)[0]
    with torch.no_grad():
        torch.testing.assert_close(prepared(*xt), first(*xt), rtol=1e-5, atol=1e-5)


def _site_names(gm):
    return sorted(gm.meta["qpass"].quantized_weights)


def _rel_error(q, model, held):
    with torch.no_grad():
        return sum(((q(*b) - model(*b)).pow(2).sum() / model(*b).pow(2).sum()).item()
                   for b in held)


@pytest.mark.parametrize("gran", [PerGroup(32), PerChannel(0)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_round_to_nearest_against_the_float_model(gran, act_order):
    model, batches, held = _mlp(), _data(8), _data(3, seed=9)
    spec = QuantSpec("int3", symmetric=False, granularity=gran)
    rtn = qpass.quantize(model, _recipe(spec), [], batches[0], progress=False)
    gptq = qpass.quantize(model, _recipe(spec, GPTQ(act_order=act_order)), batches, batches[0],
                          progress=False)
    assert _rel_error(gptq, model, held) < 0.8 * _rel_error(rtn, model, held)


def test_gptq_on_a_llama_keeps_float_layers_and_reports_each_layer():
    from tests.transform.toy_models import tiny_llama

    model = tiny_llama()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 128, (2, 32), generator=g),) for _ in range(4)]
    held = [(torch.randint(0, 128, (2, 32), generator=g),) for _ in range(2)]
    gm = qpass.capture(model, batches[0])
    spec = QuantSpec("int4", symmetric=True, granularity=PerGroup(32))
    recipe = _recipe(spec, GPTQ(), keep_float=("*lm_head", "*embed*"))
    prepared = qpass.prepare(gm, recipe, batches[0], calib_data=batches, progress=False)
    report = prepared.meta["qpass"].reports["passes"]["gptq"]
    assert len(report["layers"]) == 14 and "model.lm_head" in report["skipped"]
    assert all(r["rel_error"] < r["rel_error_rtn"] for r in report["layers"])
    q = qpass.convert(prepared)
    rtn = qpass.quantize(gm, _recipe(spec, keep_float=("*lm_head", "*embed*")), [],
                         batches[0], progress=False)
    assert _rel_error(q, model, held) < _rel_error(rtn, model, held)


def test_a_weight_changed_after_gptq_is_refused_by_convert():
    model, batches = _mlp(), _data()
    spec = QuantSpec("int4", granularity=PerGroup(32))
    prepared = qpass.prepare(model, _recipe(spec, GPTQ()), batches[0], calib_data=batches,
                             progress=False)
    next(p for n, p in prepared.named_parameters() if n.endswith("weight")).data.mul_(1.01)
    with pytest.raises(ValueError, match="no longer match its weight.*Put GPTQ last"):
        qpass.convert(prepared)


def test_group_size_that_does_not_divide_fails_before_any_work():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 200), nn.ReLU(), nn.Linear(200, 32)).eval()
    batches = _data()
    spec = QuantSpec("int4", granularity=PerGroup(64))
    with pytest.raises(ValueError, match=r"groups of 1 layer\(s\) cannot be stored: 2: group "
                                         r"size 64 does not divide 200"):
        qpass.prepare(model, _recipe(spec, GPTQ()), batches[0], calib_data=batches,
                      progress=False)
    assert model[0].weight.shape == (200, 128)  # the user's model is untouched


def test_too_little_data_warns_with_the_count():
    model, batches = _mlp(), _data(2, rows=20)
    spec = QuantSpec("int4", granularity=PerGroup(32))
    with pytest.warns(UserWarning, match=r"GPTQ saw only 40 calibration tokens; 2 layer\(s\).*"
                                         r"192"):
        qpass.prepare(model, _recipe(spec, GPTQ()), batches[0], calib_data=batches,
                      progress=False)


def test_singular_hessian_names_the_layer():
    model, batches = _mlp(), _data(2, rows=20)
    spec = QuantSpec("int4", granularity=PerGroup(32))
    with pytest.raises(ValueError, match=r"not positive definite.*Raise GPTQ\.percdamp"):
        qpass.prepare(model, _recipe(spec, GPTQ(percdamp=0.0, shrinkage=0.0)), batches[0],
                      calib_data=batches, progress=False)


def test_shrinkage_holds_up_the_hessian_that_too_few_tokens_leave_singular():
    model, batches = _mlp(), _data(2, rows=20)  # 40 tokens for up to 192 input features
    spec = QuantSpec("int4", granularity=PerGroup(32))
    with pytest.warns(UserWarning, match="GPTQ saw only 40"):
        q = qpass.quantize(model, _recipe(spec, GPTQ(percdamp=0.0, shrinkage=0.5)), batches,
                           batches[0], progress=False)
    with torch.no_grad():
        assert torch.isfinite(q(*batches[0])).all()


@pytest.mark.parametrize("bad", [{"percdamp": -0.1}, {"percdamp": 2.0}, {"shrinkage": -0.5},
                                 {"shrinkage": 1.5}, {"blocksize": 0},
                                 {"skip": "lm_head"}])
def test_invalid_config_names_the_field(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=rf"GPTQ\.{field}="):
        GPTQ(**bad)


def test_recipe_round_trip():
    recipe = _recipe(QuantSpec("int4", granularity=PerGroup(128)), GPTQ(act_order=True))
    d = recipe.to_dict()
    assert d["passes"][0] == {"type": "gptq", "percdamp": 0.01, "shrinkage": 0.5,
                              "blocksize": 128,
                              "act_order": True, "skip": [], "attention_values": True,
                              "residual_weighted": True, "sequential": True,
                              "asymmetric": 0.25}
    assert qpass.Recipe.from_dict(d) == recipe
