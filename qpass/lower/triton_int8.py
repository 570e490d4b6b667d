"""Triton kernels of the W8A8 families: per-row activation quantization, the int8 GEMM with
its scale epilogue, and the epilogue alone (after ``torch._int_mm``).

Imported only when a kernel runs (it needs triton). Rounding follows ``qpass.numerics``:
``x / scale`` with IEEE division (``div_rn``), round half to even, saturate. K is a
compile-time constant (one compilation per layer width): loops over it then also run in
triton 3.6's interpreter, which cannot take a run-time loop bound under NumPy >= 2.3.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qpass import numerics
from qpass.lower.device import interpreting

MIN_SCALE = tl.constexpr(numerics.MIN_SCALE)


@triton.jit
def _round_half_even(y):
    f = tl.floor(y)
    d = y - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    return tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)


@triton.jit
def _quantize_rows(x_ptr, q_ptr, s_ptr, xs_ptr, keep_ptr, K: tl.constexpr, stride_x, stride_q,
                   QMAX: tl.constexpr, FP8: tl.constexpr, STATIC: tl.constexpr,
                   KEEP: tl.constexpr, BLOCK_K: tl.constexpr):
    # one program per row m: s[m] = max|x[m]| / QMAX; q[m] = saturate(rne(x[m] / s[m]));
    # KEEP: x[m] * keep first (LLM.int8(): 0 at the outlier columns, 1 elsewhere)
    m = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    if STATIC:
        scale = tl.load(xs_ptr).to(tl.float32)
    else:
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_ptr + m * stride_x + k0 + offs, mask=k0 + offs < K, other=0.0)
            x = x.to(tl.float32)
            if KEEP:
                x = x * tl.load(keep_ptr + k0 + offs, mask=k0 + offs < K, other=0.0)
            amax = tl.maximum(amax, tl.abs(x))
        top = tl.max(amax, axis=0)
        scale = tl.math.div_rn(top, QMAX)
        scale = tl.where(top == 0.0, 1.0, tl.maximum(scale, MIN_SCALE))
        tl.store(s_ptr + m, scale)
    for k0 in range(0, K, BLOCK_K):
        mask = k0 + offs < K
        x = tl.load(x_ptr + m * stride_x + k0 + offs, mask=mask, other=0.0).to(tl.float32)
        if KEEP:
            x = x * tl.load(keep_ptr + k0 + offs, mask=mask, other=0.0)
        y = tl.math.div_rn(x, scale)
        if FP8:
            q = tl.clamp(y, -QMAX, QMAX).to(q_ptr.dtype.element_ty)
        else:
            q = tl.clamp(_round_half_even(y), -128.0, 127.0).to(tl.int8)
        tl.store(q_ptr + m * stride_q + k0 + offs, q, mask=mask)


def quantize_rows(x: torch.Tensor, fmt: str, x_scale: torch.Tensor | None = None,
                  keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (* keep): [M, K] -> (codes [M, K], scale [M] float32; the static 0-d one if given)."""
    f = numerics.get_format(fmt)
    x = x.contiguous()
    m, k = x.shape
    q = torch.empty(m, k, dtype=f.storage, device=x.device)
    s = torch.empty(m, dtype=torch.float32, device=x.device) if x_scale is None else x_scale
    if m:
        block = min(triton.next_power_of_2(max(k, 16)), 1024 if interpreting() else 4096)
        _quantize_rows[(m,)](x, q, s, s, s if keep is None else keep, k, x.stride(0), q.stride(0),
                             QMAX=float(f.qmax), FP8=f.is_float, STATIC=x_scale is not None,
                             KEEP=keep is not None, BLOCK_K=block)
    return q, s


@triton.jit
def _epilogue(acc, offs_m, offs_n, M, N, sa_ptr, sb_ptr, bias_ptr, res_ptr, c_ptr, stride_cm,
              stride_rm, A_PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr):
    # y = acc * s_a[m] * s_b[n] (+ bias[n]) (+ res[m, n]), in float32, stored in c's dtype
    mask_m = offs_m < M
    mask_n = offs_n < N
    if A_PER_ROW:  # noqa: SIM108  (a constexpr branch, compiled away)
        sa = tl.load(sa_ptr + offs_m, mask=mask_m, other=0.0)[:, None]
    else:
        sa = tl.load(sa_ptr)
    sb = tl.load(sb_ptr + offs_n, mask=mask_n, other=0.0)
    y = acc.to(tl.float32) * sa * sb[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_RES:
        y += tl.load(res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :], mask=mask,
                     other=0.0).to(tl.float32)
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :],
             y.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _int8_gemm(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, res_ptr, M, N, K: tl.constexpr,
               stride_am,
               stride_bn, stride_cm, stride_rm, A_PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr,
               HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # a: [M, K] int8 row-major; b: [N, K] int8 (each output channel's K codes contiguous)
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * grid_n)
    first_m = group * GROUP_M
    size_m = min(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % size_m)
    pid_n = (pid % (GROUP_M * grid_n)) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + offs_n[None, :].to(tl.int64) * stride_bn + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = k0 + offs_k < K
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & k_ok[None, :], other=0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & (offs_n[None, :] < N), other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    _epilogue(acc, offs_m, offs_n, M, N, sa_ptr, sb_ptr, bias_ptr, res_ptr, c_ptr, stride_cm,
              stride_rm, A_PER_ROW, HAS_BIAS, HAS_RES)


def _gemm_config(m: int, n: int, k: int) -> dict[str, int]:
    """Tile sizes by problem size (tuning them on H100/H200 is left to bench_kernels)."""
    if interpreting():
        return {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}
    if m <= 16:
        return {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4,
                "num_stages": 4}
    if m <= 128:
        return {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4,
                "num_stages": 4}
    return {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8,
            "num_stages": 3}


def _opt(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return like if t is None else t


def int8_gemm(q_x: torch.Tensor, w_q: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor,
              bias: torch.Tensor | None, out: torch.Tensor,
              residual: torch.Tensor | None = None) -> torch.Tensor:
    """out[M, N] = (q_x @ w_q^T) * s_x * s_w (+ bias) (+ residual); q_x: [M, K], w_q: [N, K]."""
    m, k = q_x.shape
    n = w_q.shape[0]
    cfg = _gemm_config(m, n, k)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    if m:
        _int8_gemm[grid](q_x, w_q, out, s_x, s_w, _opt(bias, s_w), _opt(residual, out), m, n, k,
                         q_x.stride(0), w_q.stride(0), out.stride(0),
                         out.stride(0) if residual is None else residual.stride(0),
                         A_PER_ROW=s_x.dim() > 0, HAS_BIAS=bias is not None,
                         HAS_RES=residual is not None, **cfg)
    return out


@triton.jit
def _scale_epilogue(acc_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, res_ptr, M, N, stride_am,
                    stride_cm, stride_rm, A_PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr,
                    HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    acc = tl.load(acc_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_n[None, :],
                  mask=mask, other=0)
    _epilogue(acc, offs_m, offs_n, M, N, sa_ptr, sb_ptr, bias_ptr, res_ptr, c_ptr, stride_cm,
              stride_rm, A_PER_ROW, HAS_BIAS, HAS_RES)


def scale_epilogue(acc: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor,
                   bias: torch.Tensor | None, out: torch.Tensor,
                   residual: torch.Tensor | None = None) -> torch.Tensor:
    """out = acc * s_x * s_w (+ bias) (+ residual) for an int32 (or float) acc [M, N]."""
    m, n = acc.shape
    bm, bn = 32, 128
    if m:
        _scale_epilogue[(triton.cdiv(m, bm), triton.cdiv(n, bn))](
            acc, out, s_x, s_w, _opt(bias, s_w), _opt(residual, out), m, n, acc.stride(0),
            out.stride(0), out.stride(0) if residual is None else residual.stride(0),
            A_PER_ROW=s_x.dim() > 0, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
            BLOCK_M=bm, BLOCK_N=bn)
    return out
