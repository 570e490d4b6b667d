"""The CPU references against the converted graph's own ops (qpass.ops), shape by shape."""

import pytest
import torch

from qpass import ops
from qpass.config import PerChannel, PerGroup, PerTensor, QuantSpec
from qpass.lower import KERNELS
from qpass.lower.packing import pack_int4, unpack_int4
from tests.lower.sites import activations, dynamic, make_site, rel_error, static

SHAPES = [(1, 64, 48), (5, 96, 33), (17, 130, 72)]  # (M, K, N): M = 1, odd K and N
INT8_W = QuantSpec("int8", granularity=PerChannel(0))
FP8_W = QuantSpec("fp8_e4m3", granularity=PerChannel(0))


def converted(x, site, bias):
    """What the converted graph computes for ``site``: Q/DQ ops, then matmul in float32."""
    a = site.act
    if a is None:
        xd = x
    elif a.dynamic:
        s, z = ops.choose_qparams_per_token(x, a.format, a.symmetric)
        xd = ops.dequantize(ops.quantize(x, s, z, -1, a.format), s, z, -1, a.format)
    else:
        s, z = a.scale, a.zero_point
        xd = ops.dequantize(ops.quantize(x, s, z, -1, a.format), s, z, -1, a.format)
    y = torch.matmul(xd, site.weight.dequantize())
    return y if bias is None else y + bias


def _check(kernel_name, site, m):
    kernel = KERNELS.get(kernel_name)()
    assert kernel.why_not(site) is None
    w = kernel.pack(site)
    x = activations(m, site.in_features)
    bias = torch.randn(site.out_features)
    ref = kernel.reference(x, w, bias)
    assert ref.dtype == torch.float64 and ref.shape == (m, site.out_features)
    assert rel_error(ref, converted(x, site, bias)) < 1e-6


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("fmt,weight", [("int8", INT8_W), ("fp8_e4m3", FP8_W)])
def test_w8a8_references_match_the_converted_graph(m, k, n, fmt, weight):
    family = "w8a8_int8" if fmt == "int8" else "w8a8_fp8"
    _check(f"{family}.reference", make_site(k, n, weight, dynamic(fmt)), m)
    _check(f"{family}.reference", make_site(k, n, weight, static(fmt, activations(m, k))), m)


@pytest.mark.parametrize("m,k,n", SHAPES[:2])
@pytest.mark.parametrize("spec", [
    QuantSpec("int8", granularity=PerChannel(0)),
    QuantSpec("uint8", symmetric=False, granularity=PerChannel(0)),
    QuantSpec("int8", granularity=PerTensor()),
    QuantSpec("int4", granularity=PerGroup(16)),
    QuantSpec("uint4", symmetric=False, granularity=PerGroup(32)),
    QuantSpec("int4", granularity=PerChannel(0)),
], ids=lambda s: f"{s.format}-{type(s.granularity).__name__}")
def test_weight_only_reference_matches_the_converted_graph(m, k, n, spec):
    _check("weight_only.reference", make_site(k, n, spec), m)


def test_weight_only_reference_dequantizes_exactly_as_convert():
    from qpass.lower.reference import weight_only_weight

    for spec in (QuantSpec("int4", granularity=PerGroup(32)),
                 QuantSpec("uint4", symmetric=False, granularity=PerGroup(32))):
        site = make_site(96, 33, spec)
        w = KERNELS.get("weight_only.reference")().pack(site)
        assert w["w_packed"].shape == (96, 17) and w["w_packed"].dtype == torch.uint8
        assert torch.equal(weight_only_weight(w), site.weight.dequantize())


def test_int4_packing_round_trips_and_rejects_wide_codes():
    codes = torch.randint(0, 16, (8, 7), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (8, 4)
    assert int(packed[0, 0]) == int(codes[0, 0]) | int(codes[0, 1]) << 4  # low nibble first
    assert torch.equal(unpack_int4(packed, 7), codes)
    with pytest.raises(ValueError, match=r"4-bit codes must lie in \[0, 15\]; got \[0, 16\]"):
        pack_int4(torch.tensor([[0, 16]]))


def test_families_refuse_what_they_cannot_compute():
    ref = {f: KERNELS.get(f"{f}.reference")() for f in ("w8a8_int8", "w8a8_fp8", "weight_only")}
    group_w8a8 = make_site(64, 32, QuantSpec("int8", granularity=PerGroup(32)), dynamic())
    assert "per group of 32" in ref["w8a8_int8"].why_not(group_w8a8)
    assert "weight-only kernels read float" in ref["weight_only"].why_not(group_w8a8)
    e5m2 = make_site(64, 32, QuantSpec("fp8_e5m2", granularity=PerChannel(0)))
    assert "fp8_e5m2" in ref["weight_only"].why_not(e5m2)
    int8_fp8 = make_site(64, 32, INT8_W, dynamic("fp8_e4m3"))
    assert "weight format is int8; this family needs fp8_e4m3" in ref["w8a8_fp8"].why_not(int8_fp8)
