"""FP8 e4m3 W8A8 through ``torch._scaled_mm`` (cuBLASLt) with row-wise scales: x quantized
per token (or per tensor, static) to e4m3, weights e4m3 per output channel. Needs FP8
tensor cores (compute capability 8.9 or newer: Ada, Hopper, Blackwell)."""

from __future__ import annotations

import torch

from qpass.lower.device import capability, check_device, cuda_why_not, triton_why_not
from qpass.lower.families import pack_w8a8, why_not_w8a8
from qpass.lower.kernel import KERNELS, Kernel
from qpass.lower.pattern import QLinear
from qpass.lower.reference import quantize_activation

FP8_CAPABILITY = (8, 9)


def quantize_fp8_rows(x: torch.Tensor, w: dict[str, torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 codes [M, K], scale [M, 1] float32): triton on CUDA, else qpass.numerics."""
    if x.is_cuda and triton_why_not() is None:
        from qpass.lower import triton_int8

        q, s = triton_int8.quantize_rows(x, "fp8_e4m3", w.get("x_scale"))
    else:
        q, s = quantize_activation(x, w, "fp8_e4m3")
    return q, s.float().reshape(-1, 1).expand(x.shape[0], 1).contiguous()


def scaled_mm(x: torch.Tensor, w: dict[str, torch.Tensor], bias: torch.Tensor | None,
              out: torch.Tensor) -> torch.Tensor:
    q_x, s_x = quantize_fp8_rows(x, w)
    y = torch._scaled_mm(q_x, w["w_q"].t(), scale_a=s_x, scale_b=w["w_scale"].reshape(1, -1),
                         out_dtype=torch.bfloat16)  # row-wise scales need a bf16 output
    return out.copy_(y if bias is None else y.float() + bias.float())


@KERNELS.register("w8a8_fp8.scaled_mm")
class Fp8ScaledMm(Kernel):
    family = "w8a8_fp8"
    backend = "cuda"
    priority = 20

    def why_not(self, site: QLinear) -> str | None:
        k, n = site.in_features, site.out_features
        if (why := why_not_w8a8(site, "fp8_e4m3") or cuda_why_not()) is not None:
            return why
        if (cap := capability()) is not None and cap < FP8_CAPABILITY:
            return (f"this GPU (compute capability {cap[0]}.{cap[1]}) has no FP8 tensor cores; "
                    "FP8 GEMMs need 8.9 or newer")
        if k % 16 or n % 16:
            return f"torch._scaled_mm needs K and N divisible by 16; this site has K={k}, N={n}"
        return None

    def pack(self, site: QLinear) -> dict[str, torch.Tensor]:
        return pack_w8a8(site)

    def run(self, x, w, bias, out):
        check_device(x, "w8a8_fp8.scaled_mm", interpretable=False)
        return scaled_mm(x, w, bias, out)
