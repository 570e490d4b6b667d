"""The triton kernels against their CPU references, run by triton's CPU interpreter.

Small shapes (the interpreter is slow), odd K and N, M = 1; outputs are poisoned with NaN
first. On a machine with a GPU these skip: tests/lower/test_kernels_gpu.py runs the compiled
kernels on the real shapes.
"""

import dataclasses

import pytest
import torch

from qpass import numerics
from qpass.config import PerChannel, PerGroup, QuantSpec
from qpass.lower import KERNELS
from qpass.lower.llm_int8 import llm_int8_reference
from qpass.lower.pattern import OutlierSplit
from qpass.lower.reference import quantize_activation, w8a8_reference, weight_only_reference
from tests.lower.sites import activations, dynamic, make_site, poisoned, rel_error, static

pytest.importorskip("triton", reason="triton is not installed (pip install 'qpass[gpu]')")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="a GPU is present: test_kernels_gpu.py runs the kernels")

SHAPES = [(1, 64, 48), (5, 96, 33), (17, 130, 72)]  # (M, K, N)
INT8_W = QuantSpec("int8", granularity=PerChannel(0))
# the interpreter computes in float32 (or the given dtype): bounds per output dtype
BOUND = {torch.float32: 1e-6, torch.float16: 1e-3}


def _run(kernel_name, site, x, bias):
    kernel = KERNELS.get(kernel_name)()
    assert kernel.why_not(site) is None, kernel.why_not(site)
    w = kernel.pack(site)
    out = poisoned(x.shape[0], site.out_features, x.dtype)
    assert kernel.run(x, w, bias, out) is out
    assert torch.isfinite(out).all(), "the kernel left output elements unwritten"
    return out, w


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_triton_gemm_matches_its_reference(m, k, n, dtype, mode):
    x = activations(m, k, dtype)
    act = dynamic() if mode == "dynamic" else static("int8", x.float())
    site = make_site(k, n, INT8_W, act)
    bias = torch.randn(n, dtype=dtype) if m != 5 else None
    out, w = _run("w8a8_int8.triton", site, x, bias)
    assert rel_error(out, w8a8_reference(x, w, bias, "int8")) < BOUND[dtype]


@pytest.mark.parametrize("fmt", ["int8", "fp8_e4m3"])
def test_row_quantization_is_bit_exact_with_qpass_numerics(fmt):
    from qpass.lower import triton_int8

    x = activations(7, 130)
    x[0, :4] = torch.tensor([127.0, 0.5, 1.5, -2.5])  # scale 1: ties round half to even
    x[1] = 0.0  # an all-zero row gets scale 1
    q, s = triton_int8.quantize_rows(x, fmt)
    q_ref, s_ref = quantize_activation(x, {}, fmt)
    assert torch.equal(s, s_ref.reshape(-1)) and s[1] == 1.0
    if fmt == "int8":
        assert torch.equal(q, q_ref)
        assert q[0, :4].tolist() == [127, 0, 2, -2]
    # fp8 codes: triton 3.6's interpreter casts to e4m3 wrongly where rounding carries into
    # the next binade (-1.97 -> -1, not -2); the GPU test checks them bit for bit


def test_int_mm_path_and_its_triton_epilogue_match_the_reference():
    from qpass.lower import triton_int8
    from qpass.lower.int8_gemm import int_mm

    site = make_site(64, 48, INT8_W, dynamic())
    w = KERNELS.get("w8a8_int8.int_mm")().pack(site)
    for m in (1, 20):  # int_mm pads M <= 16 up to torch._int_mm's minimum
        x, bias = activations(m, 64), torch.randn(48)
        q_x, s_x = triton_int8.quantize_rows(x, "int8")
        out = triton_int8.scale_epilogue(int_mm(q_x, w["w_q"]), s_x, w["w_scale"], bias,
                                         poisoned(m, 48))
        assert rel_error(out, w8a8_reference(x, w, bias, "int8")) < 1e-6


WEIGHT_SPECS = [
    QuantSpec("int4", granularity=PerGroup(32)),
    QuantSpec("uint4", symmetric=False, granularity=PerGroup(16)),
    QuantSpec("int4", granularity=PerChannel(0)),
    QuantSpec("int8", granularity=PerChannel(0)),
    QuantSpec("uint8", symmetric=False, granularity=PerGroup(32)),
]


@pytest.mark.parametrize("m,k,n", SHAPES[:2] + [(3, 64, 48)])
@pytest.mark.parametrize("spec", WEIGHT_SPECS,
                         ids=lambda s: f"{s.format}-{type(s.granularity).__name__}")
def test_weight_only_triton_matches_its_reference(m, k, n, spec):
    site = make_site(k, n, spec)
    x, bias = activations(m, k), torch.randn(n)
    out, w = _run("weight_only.triton", site, x, bias)  # M = 1 takes the GEMV kernel
    assert rel_error(out, weight_only_reference(x, w, bias)) < BOUND[torch.float32]


@pytest.mark.parametrize("split_k", [1, 2, 3])
def test_weight_only_gemv_split_k_sums_every_partial_once(split_k):
    from qpass.lower import triton_weight_only

    site = make_site(96, 33, QuantSpec("int4", granularity=PerGroup(32)))
    w = KERNELS.get("weight_only.triton")().pack(site)
    x = activations(1, 96)
    out = triton_weight_only.weight_only_gemv(x, w, None, poisoned(1, 33), split_k=split_k)
    assert rel_error(out, weight_only_reference(x, w, None)) < 1e-6


def test_weight_only_gemm_in_half_precision():
    site = make_site(96, 33, QuantSpec("int4", granularity=PerGroup(32)))
    x = activations(5, 96, torch.float16)
    out, w = _run("weight_only.triton", site, x, None)
    assert rel_error(out, weight_only_reference(x, w, None)) < 2 * torch.finfo(torch.float16).eps


def test_llm_int8_triton_adds_the_outlier_part_in_the_epilogue():
    k, n, cols = 96, 40, torch.tensor([3, 50, 77])
    site = make_site(k, n, INT8_W, dynamic())
    keep = torch.ones(k)
    keep[cols] = 0
    g = torch.Generator().manual_seed(3)
    site = dataclasses.replace(site, outliers=OutlierSplit(keep, cols,
                                                           torch.randn(3, n, generator=g)))
    x = activations(6, k)
    x[:, cols] *= 40  # the outliers the split exists for
    bias = torch.randn(n)
    out, w = _run("llm_int8.triton", site, x, bias)
    ref = llm_int8_reference(x, w, bias)
    assert rel_error(out, ref) < 1e-6
    no_split = w8a8_reference(x * keep, w, bias, "int8")
    assert rel_error(no_split, ref) > 0.1  # the float part matters


def test_fp8_scaled_mm_path_matches_its_reference_on_cpu():
    # torch._scaled_mm has a CPU implementation: it checks the layouts and scale shapes that
    # qpass hands cuBLASLt; the bound is bf16 output rounding
    from qpass.lower.fp8_gemm import scaled_mm

    for mode in ("dynamic", "static"):
        x = activations(5, 64)
        act = dynamic("fp8_e4m3") if mode == "dynamic" else static("fp8_e4m3", x)
        site = make_site(64, 48, QuantSpec("fp8_e4m3", granularity=PerChannel(0)), act)
        w = KERNELS.get("w8a8_fp8.scaled_mm")().pack(site)
        bias = torch.randn(48)
        out = scaled_mm(x, w, bias, poisoned(5, 48))
        assert rel_error(out, w8a8_reference(x, w, bias, "fp8_e4m3")) < \
            torch.finfo(torch.bfloat16).eps
    assert numerics.get_format("fp8_e4m3").storage == w["w_q"].dtype
