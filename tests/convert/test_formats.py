"""Every per-layer format convert supports, weight-only and weight plus activation, against a
float64 reference of the format's arithmetic written here without qpass.numerics."""

import pytest
import torch

import qpass
from qpass.config import LayerPrecision, PerChannel, PerGroup, PerTensor, PerToken, QuantSpec

K, N = 64, 24
FP8 = {"fp8_e4m3": (torch.float8_e4m3fn, 448.0), "fp8_e5m2": (torch.float8_e5m2, 57344.0)}
INT = {"int8": 127, "int4": 7}


def _fq(t: torch.Tensor, amax: torch.Tensor, fmt: str) -> torch.Tensor:
    """Symmetric fake quantization of float64 ``t`` with ranges ``amax`` (broadcast)."""
    if fmt in FP8:
        dtype, qmax = FP8[fmt]
        scale = amax / qmax
        return (t / scale).clamp(-qmax, qmax).to(dtype).double() * scale
    qmax = INT[fmt]
    scale = torch.where(amax == 0, 1.0, amax / qmax)
    return torch.round(t / scale).clamp(-qmax - 1, qmax) * scale


def _ref_weight(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    g = spec.granularity
    if isinstance(g, PerGroup):
        groups = w.reshape(N, K // g.size, g.size)
        return _fq(groups, groups.abs().amax(-1, keepdim=True), spec.format).reshape(N, K)
    return _fq(w, w.abs().amax(1, keepdim=True), spec.format)


def _ref_act(x: torch.Tensor, calib: torch.Tensor, spec: QuantSpec | None) -> torch.Tensor:
    if spec is None:
        return x
    if spec.dynamic:
        return _fq(x, x.abs().amax(-1, keepdim=True), spec.format)
    return _fq(x, calib.abs().amax(), spec.format)


def _w(fmt, gran=None):
    return QuantSpec(fmt, granularity=gran or PerChannel(0))


def _a(fmt, dynamic):
    return QuantSpec(fmt, granularity=PerToken() if dynamic else PerTensor(), dynamic=dynamic)


CASES = {
    "int8 weight-only": LayerPrecision(_w("int8")),
    "int8 w8a8 static": LayerPrecision(_w("int8"), _a("int8", False)),
    "int4 g16 weight-only": LayerPrecision(_w("int4", PerGroup(16))),
    "int4 g16 + int8 per token": LayerPrecision(_w("int4", PerGroup(16)), _a("int8", True)),
    "fp8_e4m3 weight-only": LayerPrecision(_w("fp8_e4m3")),
    "fp8_e4m3 w+a static": LayerPrecision(_w("fp8_e4m3"), _a("fp8_e4m3", False)),
    "fp8_e4m3 w+a per token": LayerPrecision(_w("fp8_e4m3"), _a("fp8_e4m3", True)),
    "fp8_e5m2 weight-only": LayerPrecision(_w("fp8_e5m2")),
    "fp8_e5m2 w+a static": LayerPrecision(_w("fp8_e5m2"), _a("fp8_e5m2", False)),
    "fp8_e5m2 g16 + per token": LayerPrecision(_w("fp8_e5m2", PerGroup(16)),
                                               _a("fp8_e5m2", True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_convert_matches_a_float64_reference_of_the_format(case):
    prec = CASES[case]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(K, N)).eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, K, generator=g) * 2 for _ in range(2)]
    recipe = qpass.Recipe(f"test {case}", prec, keep_float=())
    q = qpass.quantize(model, recipe, calib, (calib[0],), progress=False)
    w, b = model[0].weight.detach().double(), model[0].bias.detach().double()
    x = torch.randn(4, K, generator=g) * 2
    x[0] = x[0].clamp(-3, 3)  # stay inside the static range for one row, saturate in others
    want = _ref_act(x.double(), torch.cat(calib).double(), prec.activation) @ _ref_weight(
        w, prec.weight).T + b
    got = q(x).double()
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)
    float_err = (got - model(x).double()).abs().max()
    assert float_err > 1e-4  # it is quantized: a reference that ignored the format would fail
