"""Compile every qpass triton kernel for Hopper (sm_90) with the tile configs the GPU path
uses, without a GPU: ``python -m tests.lower.compile_kernels``.

Run in its own process (tests/lower/test_triton_compile.py does): triton builds its own
standard library for the interpreter or for the compiler when it is imported, so the two
cannot mix in one process. Prints one line per kernel; raises on the first failure.
"""

from __future__ import annotations

import os

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET=1"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from qpass.lower import triton_int8 as ti  # noqa: E402
from qpass.lower import triton_weight_only as tw  # noqa: E402

H100_SHARED = 232448  # bytes of shared memory one H100 block may use


def compile_kernel(fn, types: dict, constants: dict, **options):
    signature = {name: types.get(name, "constexpr") for name in fn.arg_names}
    missing = [n for n, t in signature.items() if t == "constexpr" and n not in constants]
    assert not missing, f"no value for constexpr {missing}"
    kernel = triton.compile(ASTSource(fn, signature, constants),
                            target=GPUTarget("cuda", 90, 32), options=options)
    assert kernel.metadata.shared <= H100_SHARED, f"shared memory {kernel.metadata.shared}"
    return kernel


def _split(cfg: dict) -> tuple[dict, dict]:
    cfg = dict(cfg)
    return cfg, {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}


def int8_gemms() -> None:
    types = {"a_ptr": "*i8", "b_ptr": "*i8", "c_ptr": "*fp16", "sa_ptr": "*fp32",
             "sb_ptr": "*fp32", "bias_ptr": "*fp16", "res_ptr": "*fp16", "M": "i32", "N": "i32",
             "stride_am": "i32", "stride_bn": "i32", "stride_cm": "i32", "stride_rm": "i32"}
    for m in (1, 64, 2048):
        cfg, opts = _split(ti._gemm_config(m, 4096, 4096))
        consts = {"K": 4096, "A_PER_ROW": True, "HAS_BIAS": True, "HAS_RES": m == 64, **cfg}
        ptx = compile_kernel(ti._int8_gemm, types, consts, **opts).asm["ptx"]
        tc = "wgmma" if "wgmma.mma_async" in ptx else "mma.sync" if "mma.sync" in ptx else None
        assert tc and ".s32.s8.s8" in ptx, "the int8 GEMM does not use int8 tensor cores"
        print(f"_int8_gemm M={m} {cfg}: {tc} s8 x s8 -> s32")


def row_quantization() -> None:
    for fp8 in (False, True):
        types = {"x_ptr": "*fp16", "q_ptr": "*fp8e4nv" if fp8 else "*i8", "s_ptr": "*fp32",
                 "xs_ptr": "*fp32", "keep_ptr": "*fp32", "stride_x": "i32", "stride_q": "i32"}
        consts = {"K": 11008, "QMAX": 448.0 if fp8 else 127.0, "FP8": fp8, "STATIC": False,
                  "KEEP": not fp8, "BLOCK_K": 4096}
        compile_kernel(ti._quantize_rows, types, consts, num_warps=8)
        print(f"_quantize_rows fp8={fp8}: ok")
    types = {"acc_ptr": "*i32", "c_ptr": "*bf16", "sa_ptr": "*fp32", "sb_ptr": "*fp32",
             "bias_ptr": "*bf16", "res_ptr": "*bf16", "M": "i32", "N": "i32",
             "stride_am": "i32", "stride_cm": "i32", "stride_rm": "i32"}
    consts = {"A_PER_ROW": True, "HAS_BIAS": True, "HAS_RES": False, "BLOCK_M": 32,
              "BLOCK_N": 128}
    compile_kernel(ti._scale_epilogue, types, consts)
    print("_scale_epilogue: ok")


def weight_only() -> None:
    for m, int4, group in ((16, True, 128), (2048, True, 128), (256, False, 4096)):
        x = "*bf16" if int4 else "*fp16"
        types = {"x_ptr": x, "w_ptr": "*u8" if int4 else "*i8", "s_ptr": "*fp32",
                 "z_ptr": "*fp32", "bias_ptr": x, "c_ptr": x, "M": "i32", "N": "i32",
                 "stride_xm": "i32", "stride_wk": "i32", "stride_cm": "i32"}
        cfg, opts = _split(tw._gemm_config(m, None))
        consts = {"K": 4096, "G": group, "INT4": int4, "HAS_ZERO": False,
                  "OFFSET": 8 if int4 else 0, "HAS_BIAS": False, "PRECISION": "tf32", **cfg}
        ptx = compile_kernel(tw._wo_gemm, types, consts, **opts).asm["ptx"]
        assert "mma" in ptx, "the weight-only GEMM does not use tensor cores"
        print(f"_wo_gemm M={m} int4={int4} g={group}: ok")
    for split_k in (1, 4):
        types = {"x_ptr": "*fp16", "w_ptr": "*u8", "s_ptr": "*fp32", "z_ptr": "*fp32",
                 "bias_ptr": "*fp16", "c_ptr": "*fp16" if split_k == 1 else "*fp32",
                 "N": "i32", "stride_wk": "i32"}
        consts = {"K": 4096, "G": 128, "INT4": True, "HAS_ZERO": True, "OFFSET": 8,
                  "HAS_BIAS": True, "SPLIT_K": split_k, "BLOCK_N": 64, "BLOCK_K": 128}
        compile_kernel(tw._wo_gemv, types, consts, num_warps=4)
        print(f"_wo_gemv split_k={split_k}: ok")


if __name__ == "__main__":
    int8_gemms()
    row_quantization()
    weight_only()
