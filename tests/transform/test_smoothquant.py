"""The SmoothQuant pass keeps the float function and lowers the quantized error."""

from __future__ import annotations

import pytest
import torch

import qpass
from qpass.eval.perplexity import window_nll  # noqa: F401  (eval must import without models)
from tests.transform.toy_models import PostNormBlock, tiny_llama

pytest.importorskip("transformers")


def _batches(n=4, t=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 128, (1, t), generator=g),) for _ in range(n)]


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("alpha", [0.5, 0.8, None])
def test_fold_is_exact_in_float(alpha):
    model, batches = tiny_llama(outlier=30.0), _batches()
    recipe = qpass.resolve_recipe("w8a8_static").replace(passes=(qpass.SmoothQuant(alpha),))
    prepared = qpass.prepare(model, recipe, batches[0], calib_data=batches, progress=False)
    report = prepared.meta["qpass"].reports["passes"]["smoothquant"]
    folds = sorted({g["fold"] for g in report["groups"]})
    assert "scale_mul" in folds and ("linear" in folds or alpha is None)
    x = _batches(1, seed=7)[0]
    with torch.no_grad():
        assert _rel(prepared(*x), model(*x)) <= 1e-5


def _error(recipe, model, batches, held_out):
    q = qpass.quantize(model, recipe, batches, batches[0], progress=False)
    with torch.no_grad():
        return sum(((q(*b) - model(*b)).pow(2).mean() / model(*b).pow(2).mean()).item()
                   for b in held_out)


@pytest.mark.parametrize("base", ["w8a8_static", "w8a8_dynamic"])
def test_smoothing_lowers_the_quantized_error_with_outliers(base):
    model, batches, held = tiny_llama(outlier=60.0), _batches(), _batches(3, seed=9)
    plain = qpass.resolve_recipe(base)
    e_plain = _error(plain, model, batches, held)
    e_half = _error(plain.replace(passes=(qpass.SmoothQuant(0.5),)), model, batches, held)
    searched = plain.replace(passes=(qpass.SmoothQuant(None),))
    e_search = _error(searched, model, batches, held)
    assert e_half < 0.7 * e_plain
    assert e_search < 0.7 * e_plain
    # per group, the search keeps the alpha with the smallest measured error, and it is never
    # worse than leaving the group unsmoothed
    prepared = qpass.prepare(model, searched, batches[0], calib_data=batches, progress=False)
    for g in prepared.meta["qpass"].reports["passes"]["smoothquant"]["groups"]:
        assert g["error"] <= g["error_unsmoothed"]


def test_explicit_multiply_where_no_fold_exists():
    torch.manual_seed(0)
    model = PostNormBlock().eval()
    batches = [(torch.randn(2, 5, 32),) for _ in range(3)]
    recipe = qpass.resolve_recipe("w8a8_static").replace(
        passes=(qpass.SmoothQuant(0.5, explicit_multiply=True),))
    prepared = qpass.prepare(model, recipe, batches[0], calib_data=batches, progress=False)
    groups = prepared.meta["qpass"].reports["passes"]["smoothquant"]["groups"]
    assert {g["fold"] for g in groups} == {"explicit_multiply"}
    assert any(n.target is torch.ops.aten.mul.Tensor and "qpass_smooth" in str(n.args[1])
               for n in prepared.graph.nodes)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert _rel(prepared(x), model(x)) <= 1e-5
    plain = qpass.prepare(model, recipe.replace(passes=(qpass.SmoothQuant(0.5),)), batches[0],
                          calib_data=batches, progress=False)
    rows = plain.meta["qpass"].reports["passes"]["smoothquant"]["groups"]
    assert {g["fold"] for g in rows} == {"none"} and all(g["reason"] for g in rows)


@pytest.mark.parametrize("bad", [{"alpha": 1.5}, {"alpha": -0.1}, {"grid": ()},
                                 {"grid": (0.5, 2.0)}, {"sample_rows": 0}])
def test_invalid_config_is_an_error_naming_the_field(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=rf"SmoothQuant\.{field}="):
        qpass.SmoothQuant(**bad)


def test_recipe_round_trip_and_keep_float_is_not_smoothed():
    recipe = qpass.resolve_recipe("w8a8_dynamic").replace(passes=(qpass.SmoothQuant(None),))
    d = recipe.to_dict()
    assert d["passes"][0]["type"] == "smoothquant" and d["passes"][0]["alpha"] is None
    assert qpass.Recipe.from_dict(d) == recipe
    model, batches = tiny_llama(), _batches(2)
    prepared = qpass.prepare(model, recipe, batches[0], calib_data=batches, progress=False)
    groups = prepared.meta["qpass"].reports["passes"]["smoothquant"]["groups"]
    assert not any("lm_head" in c for g in groups for c in g["consumers"])
