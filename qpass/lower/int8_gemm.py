"""W8A8 int8 GEMM kernels: x quantized per token (or per tensor, static) to int8,
int8 x int8 -> int32, and an epilogue applying s_x[m] * s_w[n] (+ bias), out in x's dtype.

- ``w8a8_int8.triton``: one triton kernel quantizes the rows, one triton GEMM accumulates in
  int32 and applies the epilogue in registers.
- ``w8a8_int8.int_mm``: the same quantization, ``torch._int_mm`` (cuBLASLt) for the int32
  product, then a triton epilogue (torch ops without triton).
"""

from __future__ import annotations

import torch

from qpass.lower.device import check_device, cuda_why_not, triton_why_not
from qpass.lower.families import pack_w8a8, why_not_w8a8
from qpass.lower.kernel import KERNELS, Kernel
from qpass.lower.pattern import QLinear
from qpass.lower.reference import quantize_activation


@KERNELS.register("w8a8_int8.triton")
class Int8TritonGemm(Kernel):
    family = "w8a8_int8"
    backend = "cuda"
    priority = 20

    def why_not(self, site: QLinear) -> str | None:
        return why_not_w8a8(site, "int8") or triton_why_not()

    def pack(self, site: QLinear) -> dict[str, torch.Tensor]:
        return pack_w8a8(site)

    def run(self, x, w, bias, out):
        check_device(x, "w8a8_int8.triton", interpretable=True)
        from qpass.lower import triton_int8

        q_x, s_x = triton_int8.quantize_rows(x, "int8", w.get("x_scale"))
        return triton_int8.int8_gemm(q_x, w["w_q"], s_x, w["w_scale"], bias, out)


def int_mm(q_x: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """int32 q_x [M, K] @ w_q[N, K]^T through cuBLASLt; pads M up to 17 (its minimum)."""
    m = q_x.shape[0]
    if m > 16:
        return torch._int_mm(q_x, w_q.t())
    padded = torch.nn.functional.pad(q_x, (0, 0, 0, 17 - m))
    return torch._int_mm(padded, w_q.t())[:m]


@KERNELS.register("w8a8_int8.int_mm")
class Int8IntMm(Kernel):
    family = "w8a8_int8"
    backend = "cuda"
    priority = 10

    def why_not(self, site: QLinear) -> str | None:
        k, n = site.in_features, site.out_features
        if (why := why_not_w8a8(site, "int8") or cuda_why_not()) is not None:
            return why
        if k % 8 or n % 8:
            return f"torch._int_mm needs K and N divisible by 8; this site has K={k}, N={n}"
        return None

    def pack(self, site: QLinear) -> dict[str, torch.Tensor]:
        return pack_w8a8(site)

    def run(self, x, w, bias, out):
        check_device(x, "w8a8_int8.int_mm", interpretable=False)
        if triton_why_not() is None:
            from qpass.lower import triton_int8

            q_x, s_x = triton_int8.quantize_rows(x, "int8", w.get("x_scale"))
            return triton_int8.scale_epilogue(int_mm(q_x, w["w_q"]), s_x, w["w_scale"], bias,
                                              out)
        q_x, s_x = quantize_activation(x, w, "int8")
        y = int_mm(q_x, w["w_q"]).float() * s_x.float() * w["w_scale"]
        return out.copy_(y if bias is None else y + bias.float())
