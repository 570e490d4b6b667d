"""Triton kernels of the weight-only family (W4A16, W8A16): the weight is dequantized in
registers, tile by tile, inside the GEMM; HBM only ever holds the 4- or 8-bit codes.

- ``_wo_gemm``: tiled ``tl.dot`` GEMM for M > 1. Per-channel weights keep ``codes - zero``
  (small integers, exact in fp16) in the dot and apply the scale in the epilogue; per-group
  weights are scaled per tile.
- ``_wo_gemv``: batch-1 decode. Each program reduces a [BLOCK_K, BLOCK_N] tile on the CUDA
  cores; split-K spreads a narrow N over the SMs and sums partials with atomic adds.

Packed layout: see ``qpass.lower.packing`` (int4: two columns per byte, low nibble first).
K and the group size are compile-time constants (one compilation per layer shape).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qpass.lower.device import interpreting


@triton.jit
def _codes(w_ptr, offs_k, k_ok, pid_n, N, stride_wk, INT4: tl.constexpr,
           BLOCK_N: tl.constexpr):
    """[BLOCK_K, BLOCK_N] float32 codes of one weight tile."""
    if INT4:
        offs_p = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        p = tl.load(w_ptr + offs_k[:, None] * stride_wk + offs_p[None, :],
                    mask=k_ok[:, None] & (offs_p[None, :] < (N + 1) // 2), other=0)
        codes = tl.interleave(p & 0xF, (p >> 4) & 0xF)
    else:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        codes = tl.load(w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :],
                        mask=k_ok[:, None] & (offs_n[None, :] < N), other=0)
    return codes.to(tl.float32)


@triton.jit
def _dequant(codes, s_ptr, z_ptr, offs_k, k_ok, offs_n, N, G: tl.constexpr,
             PER_CHANNEL: tl.constexpr, HAS_ZERO: tl.constexpr, OFFSET: tl.constexpr):
    """codes - zero, times the group scale unless scales are per channel (epilogue)."""
    mask = k_ok[:, None] & (offs_n < N)[None, :]
    at = (offs_k // G)[:, None] * N + offs_n[None, :]
    if HAS_ZERO:  # noqa: SIM108  (a constexpr branch, compiled away)
        w = codes - tl.load(z_ptr + at, mask=mask, other=0.0)
    else:
        w = codes - OFFSET
    if not PER_CHANNEL:
        w = w * tl.load(s_ptr + at, mask=mask, other=0.0)
    return w


@triton.jit
def _wo_gemm(x_ptr, w_ptr, s_ptr, z_ptr, bias_ptr, c_ptr, M, N, stride_xm, stride_wk, stride_cm,
             K: tl.constexpr, G: tl.constexpr, INT4: tl.constexpr, HAS_ZERO: tl.constexpr,
             OFFSET: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             GROUP_M: tl.constexpr):
    # x: [M, K] float; y[M, N] = x @ dq(W)
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    first_m = (pid // (GROUP_M * grid_n)) * GROUP_M
    size_m = min(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % size_m)
    pid_n = (pid % (GROUP_M * grid_n)) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        k_ok = ks < K
        a = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + ks[None, :],
                    mask=(offs_m[:, None] < M) & k_ok[None, :], other=0.0)
        codes = _codes(w_ptr, ks, k_ok, pid_n, N, stride_wk, INT4, BLOCK_N)
        w = _dequant(codes, s_ptr, z_ptr, ks, k_ok, offs_n, N, G, G == K, HAS_ZERO, OFFSET)
        acc = tl.dot(a, w.to(a.dtype), acc, input_precision=PRECISION)
    if G == K:
        acc = acc * tl.load(s_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    tl.store(c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :],
             acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _wo_gemv(x_ptr, w_ptr, s_ptr, z_ptr, bias_ptr, c_ptr, N, stride_wk, K: tl.constexpr,
             G: tl.constexpr, INT4: tl.constexpr, HAS_ZERO: tl.constexpr, OFFSET: tl.constexpr,
             HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_K: tl.constexpr):
    # x: [K]; y[N] = x @ dq(W). SPLIT_K > 1: c is a zeroed float32 buffer, partials added
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    K_SPLIT: tl.constexpr = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for i in range(0, K_SPLIT, BLOCK_K):
        ks = pid_k * K_SPLIT + i + offs_k
        k_ok = ks < K
        x = tl.load(x_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        codes = _codes(w_ptr, ks, k_ok, pid_n, N, stride_wk, INT4, BLOCK_N)
        w = _dequant(codes, s_ptr, z_ptr, ks, k_ok, offs_n, N, G, G == K, HAS_ZERO, OFFSET)
        acc += tl.sum(x[:, None] * w, axis=0)
    n_ok = offs_n < N
    if G == K:
        acc = acc * tl.load(s_ptr + offs_n, mask=n_ok, other=0.0)
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        tl.store(c_ptr + offs_n, acc.to(c_ptr.dtype.element_ty), mask=n_ok)
    else:
        tl.atomic_add(c_ptr + offs_n, acc, mask=n_ok)


def _layout(w: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int, bool, int]:
    """(codes tensor, K, group size, int4, implicit zero) of a packed weight-only layout."""
    int4 = "w_packed" in w
    codes = w["w_packed"] if int4 else w["w_q"]
    k = codes.shape[0]
    return codes, k, k // w["w_scale"].shape[0], int4, 8 if int4 else 0


def _gemm_config(m: int, x_dtype: torch.dtype) -> dict[str, int]:
    if interpreting():
        return {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}
    if m <= 16:
        return {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4,
                "num_stages": 4}
    if m <= 128:
        return {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4,
                "num_stages": 4}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8,
            "num_stages": 3}


def weight_only_gemm(x: torch.Tensor, w: dict[str, torch.Tensor], bias: torch.Tensor | None,
                     out: torch.Tensor) -> torch.Tensor:
    """out[M, N] = x[M, K] @ dq(W) (+ bias) with the tiled dot kernel."""
    codes, k, g, int4, offset = _layout(w)
    m, n = x.shape[0], out.shape[1]
    x = x.contiguous()
    cfg = _gemm_config(m, x.dtype)
    zero = w.get("w_zero", w["w_scale"])
    if m:
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
        _wo_gemm[grid](x, codes, w["w_scale"], zero, w["w_scale"] if bias is None else bias, out,
                       m, n, x.stride(0), codes.stride(0), out.stride(0), K=k, G=g, INT4=int4,
                       HAS_ZERO="w_zero" in w, OFFSET=offset, HAS_BIAS=bias is not None,
                       PRECISION="ieee" if x.dtype == torch.float32 else "tf32", **cfg)
    return out


def weight_only_gemv(x: torch.Tensor, w: dict[str, torch.Tensor], bias: torch.Tensor | None,
                     out: torch.Tensor, split_k: int | None = None) -> torch.Tensor:
    """out[1, N] = x[1, K] @ dq(W) (+ bias) with the batch-1 kernel."""
    codes, k, g, int4, offset = _layout(w)
    n = out.shape[1]
    block_n, block_k = (32, 32) if interpreting() else (64, 128)
    n_blocks = triton.cdiv(n, block_n)
    if split_k is None:  # about 4 programs per SM of an H100 (132 SMs)
        split_k = max(1, min(triton.next_power_of_2(max(1, 528 // n_blocks)),
                             triton.cdiv(k, block_k)))
    target = out if split_k == 1 else torch.zeros(n, dtype=torch.float32, device=x.device)
    _wo_gemv[(n_blocks, split_k)](
        x.reshape(-1).contiguous(), codes, w["w_scale"], w.get("w_zero", w["w_scale"]),
        w["w_scale"] if bias is None else bias, target, n, codes.stride(0), K=k, G=g, INT4=int4,
        HAS_ZERO="w_zero" in w, OFFSET=offset, HAS_BIAS=bias is not None, SPLIT_K=split_k,
        BLOCK_N=block_n, BLOCK_K=block_k)
    if split_k > 1:
        out.copy_((target if bias is None else target + bias.float()).reshape(1, n))
    return out
