"""LLM.int8() split in the converted graph against plain float64 reference implementations."""

import pytest
import torch

import qpass
from qpass.config import LayerPrecision, PerChannel, PerTensor, QuantSpec
from qpass.policies import LlmInt8

K, N, THRESHOLD = 16, 8, 6.0


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(K, N)).eval()


def _x(outlier_cols, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, K, generator=g)
    for c in outlier_cols:
        x[1, 3, c] = 40.0 + c  # one token: the column is an outlier for this batch only
    return x


def _int8_rows(t: torch.Tensor) -> torch.Tensor:
    """Vector-wise symmetric int8 fake quantization along the last axis, in float64."""
    scale = t.abs().amax(dim=-1, keepdim=True) / 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.round(t / scale).clamp(-128, 127) * scale


def reference_llm_int8(x, w, b, threshold=None, columns=None):
    """Plain LLM.int8(): float64, no qpass code. Dynamic: columns from this ``x``; static:
    the given ``columns`` (their weights zeroed before quantizing, kept exact in float)."""
    x, w, b = x.double(), w.double(), b.double()
    if columns is None:
        mask = x.reshape(-1, x.shape[-1]).abs().amax(dim=0) > threshold
        w_q = _int8_rows(w)
        w_out = w_q
    else:
        mask = torch.zeros(x.shape[-1], dtype=torch.bool)
        mask[list(columns)] = True
        w_q = _int8_rows(torch.where(mask, 0.0, w))
        w_out = w
    x_out = torch.where(mask, x, 0.0)
    return _int8_rows(x - x_out) @ w_q.T + x_out @ w_out.T + b


def _quantize(mode: str, calib: list[torch.Tensor]):
    recipe = qpass.resolve_recipe("w8a8_dynamic").replace(
        keep_float=(), policies=(LlmInt8(THRESHOLD, mode=mode),))
    return qpass.quantize(_model(), recipe, calib, (calib[0],), progress=False)


def test_dynamic_split_equals_the_plain_reference_and_finds_columns_per_batch():
    model = _model()
    q = _quantize("dynamic", [_x([2], seed=1)])
    lin = model[0]
    for cols, seed in (([2], 2), ([5, 11], 3), ([], 4)):  # columns differ from calibration
        x = _x(cols, seed)
        want = reference_llm_int8(x, lin.weight, lin.bias, threshold=THRESHOLD)
        torch.testing.assert_close(q(x).double(), want, rtol=1e-5, atol=1e-5)
        # without the split the outliers would cost far more than the int8 rounding does
        assert (want - model(x).double()).abs().max() < 0.05
    targets = {str(n.target) for n in q.graph.nodes}
    assert {"aten.amax.default", "aten.gt.Scalar", "aten.where.ScalarOther"} <= targets


def test_static_split_uses_calibrated_columns_and_exact_float_weights():
    model = _model()
    calib = [_x([3, 9], seed=1), _x([9], seed=2)]
    q = _quantize("static", calib)
    prec = q.meta["qpass"].precisions
    (site_prec,) = prec.values()
    assert site_prec.outlier_columns == (3, 9)
    lin = model[0]
    x = _x([3], seed=5)
    want = reference_llm_int8(x, lin.weight, lin.bias, columns=(3, 9))
    torch.testing.assert_close(q(x).double(), want, rtol=1e-5, atol=1e-5)
    matmuls = [n for n in q.graph.nodes if str(n.target) == "aten.matmul.default"]
    assert len(matmuls) == 2
    assert any(str(n.target) == "aten.index_select.default" for n in q.graph.nodes)


def test_static_split_with_static_activations_calibrates_the_range_without_the_outliers():
    """int8 part per tensor, its symmetric MinMax range taken over x * keep on the calibration
    batches (float64 reference, no qpass code); the outlier columns stay exact in float."""
    model, lin = _model(), None
    lin = model[0]
    calib = [_x([3, 9], seed=1), _x([9], seed=2)]
    static = LayerPrecision(QuantSpec("int8", granularity=PerChannel(0)),
                            QuantSpec("int8", granularity=PerTensor()))
    recipe = qpass.Recipe("split_static", static, keep_float=(),
                          policies=(LlmInt8(THRESHOLD, precision=static),))
    q = qpass.quantize(model, recipe, calib, (calib[0],), progress=False)
    (site_prec,) = q.meta["qpass"].precisions.values()
    assert site_prec.outlier_columns == (3, 9) and not site_prec.activation.dynamic
    keep = torch.ones(K, dtype=torch.float64)
    keep[[3, 9]] = 0
    scale = max(float((c.double() * keep).abs().max()) for c in calib) / 127
    assert scale < THRESHOLD / 127  # the outliers (43, 49) did not stretch the range
    x = _x([3], seed=5)
    x_in = torch.round(x.double() * keep / scale).clamp(-128, 127) * scale
    w = lin.weight.double()
    w_q = _int8_rows(torch.where(keep == 0, 0.0, w))
    want = x_in @ w_q.T + (x.double() * (1 - keep)) @ w.T + lin.bias.double()
    torch.testing.assert_close(q(x).double(), want, rtol=1e-5, atol=1e-5)
    assert sum(str(n.target) == "qpass.quantize.default" for n in q.graph.nodes) == 1


def test_a_dynamic_split_refuses_static_activations():
    static = LayerPrecision(QuantSpec(), QuantSpec(granularity=PerTensor()))
    with pytest.raises(ValueError, match=r"activation.dynamic=False.*outlier_mode='dynamic'.*"
                                         r"outlier_mode='static' for static activations"):
        LlmInt8(mode="dynamic", precision=static)


def test_static_split_without_columns_is_a_clear_error():
    prec = LlmInt8()._precision(None)
    recipe = qpass.Recipe("static_no_columns", prec, keep_float=())
    prepared = qpass.prepare(_model(), recipe, (_x([], 0),))
    with pytest.raises(ValueError, match=r"static outlier split.*no outlier_columns.*llm_int8"):
        qpass.convert(prepared)
