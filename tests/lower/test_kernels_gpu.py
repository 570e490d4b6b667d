"""Every CUDA kernel against its CPU reference on the Llama-7B/8B linear shapes and odd ones
(K or N not a multiple of 128, M = 1), with fresh random inputs and NaN-poisoned outputs.

Bound: ||y - ref|| / ||ref|| against the float64 reference, per output dtype: fp16 and bf16
outputs round each element by up to eps/2, so the bound is one eps of the output dtype
(FP8 writes bf16 whatever the model dtype: bf16's eps).
"""

import pytest
import torch

from qpass.config import PerChannel, PerGroup, QuantSpec
from qpass.lower import KERNELS
from tests.lower.sites import activations, dynamic, make_site, poisoned, rel_error, static

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

LLAMA = [(4096, 4096), (4096, 11008), (11008, 4096), (4096, 14336)]  # (K, N)
ODD = [(4160, 4104), (1000, 1032), (96, 40)]  # K or N not a multiple of 128
MS = [1, 16, 256, 2048]
SPECS = {
    "w8a8_int8": (QuantSpec("int8", granularity=PerChannel(0)), "int8"),
    "w8a8_fp8": (QuantSpec("fp8_e4m3", granularity=PerChannel(0)), "fp8_e4m3"),
    "w4a16": (QuantSpec("int4", granularity=PerGroup(128)), None),
    "w4a16_asym": (QuantSpec("uint4", symmetric=False, granularity=PerGroup(128)), None),
    "w8a16": (QuantSpec("int8", granularity=PerChannel(0)), None),
}
KERNELS_OF = {"w8a8_int8": ["w8a8_int8.triton", "w8a8_int8.int_mm"],
              "w8a8_fp8": ["w8a8_fp8.scaled_mm"], "w4a16": ["weight_only.triton"],
              "w4a16_asym": ["weight_only.triton"], "w8a16": ["weight_only.triton"]}
CASES = [(fmt, name) for fmt, names in KERNELS_OF.items() for name in names]


def _site(fmt, k, n, x):
    spec, act = SPECS[fmt]
    site = make_site(k, n, spec, None if act is None else dynamic(act), seed=k + n)
    return site, act


def _check(kernel_name, site, x, bias):
    kernel = KERNELS.get(kernel_name)()
    if (why := kernel.why_not(site)) is not None:
        pytest.skip(f"{kernel_name} refuses this site: {why}")
    ref_kernel = KERNELS.get(f"{kernel.family}.reference")()
    w = {k: v.cuda() for k, v in kernel.pack(site).items()}
    out = poisoned(x.shape[0], site.out_features, x.dtype, "cuda")
    kernel.run(x, w, bias, out)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all(), "the kernel left output elements unwritten"
    ref = ref_kernel.reference(x, w, bias)
    out_dtype = torch.bfloat16 if kernel.family == "w8a8_fp8" else x.dtype
    err = rel_error(out, ref)
    assert err < torch.finfo(out_dtype).eps, f"relative error {err:.2e}"


@pytest.mark.parametrize("fmt,kernel", CASES)
@pytest.mark.parametrize("k,n", LLAMA + ODD)
@pytest.mark.parametrize("m", MS)
def test_kernel_matches_reference(fmt, kernel, k, n, m):
    x = activations(m, k, torch.float16, seed=m, device="cuda")
    site, _ = _site(fmt, k, n, x)
    bias = torch.randn(n, device="cuda", dtype=torch.float16)
    _check(kernel, site, x, bias)


@pytest.mark.parametrize("fmt,kernel", [c for c in CASES if c[0] in ("w8a8_int8", "w4a16")])
def test_kernels_in_bf16_and_static_activations(fmt, kernel):
    x = activations(33, 1000, torch.bfloat16, device="cuda")
    site, act = _site(fmt, 1000, 1032, x)
    if act is not None:
        import dataclasses

        site = dataclasses.replace(site, act=static(act, x.float().cpu()))
    _check(kernel, site, x, None)


def test_row_quantization_is_bit_exact_on_the_gpu():
    from qpass.lower import triton_int8
    from qpass.lower.reference import quantize_activation

    x = activations(64, 4160, torch.float16, device="cuda")
    for fmt in ("int8", "fp8_e4m3"):
        q, s = triton_int8.quantize_rows(x, fmt)
        q_ref, s_ref = quantize_activation(x, {}, fmt)
        assert torch.equal(s, s_ref.reshape(-1))
        assert torch.equal(q.float(), q_ref.float())


def test_llm_int8_split_on_the_gpu():
    import dataclasses

    from qpass.lower.pattern import OutlierSplit

    k, n = 4096, 4096
    cols = torch.randperm(k, generator=torch.Generator().manual_seed(0))[: k // 1000]
    keep = torch.ones(k)
    keep[cols] = 0
    site = make_site(k, n, SPECS["w8a8_int8"][0], dynamic())
    site = dataclasses.replace(site, outliers=OutlierSplit(keep, cols, torch.randn(len(cols), n)))
    for m in MS:
        x = activations(m, k, torch.float16, seed=m, device="cuda")
        x[:, cols.cuda()] *= 30
        _check("llm_int8.triton", site, x, None)
