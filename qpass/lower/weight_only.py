"""Weight-only kernels (W8A16, W4A16 per channel or per group): float activations, 8- or
4-bit weights dequantized in registers inside a triton GEMM; a GEMV path for M = 1."""

from __future__ import annotations

import torch

from qpass.lower.device import check_device, triton_why_not
from qpass.lower.families import pack_weight_only, why_not_weight_only
from qpass.lower.kernel import KERNELS, Kernel
from qpass.lower.pattern import QLinear

GEMV_MAX_M = 1  # rows at or below this take the batch-1 kernel


@KERNELS.register("weight_only.triton")
class WeightOnlyTriton(Kernel):
    family = "weight_only"
    backend = "cuda"
    priority = 20

    def why_not(self, site: QLinear) -> str | None:
        return why_not_weight_only(site) or triton_why_not()

    def pack(self, site: QLinear) -> dict[str, torch.Tensor]:
        return pack_weight_only(site)

    def run(self, x, w, bias, out):
        check_device(x, "weight_only.triton", interpretable=True)
        from qpass.lower import triton_weight_only

        if x.shape[0] <= GEMV_MAX_M and x.shape[0]:
            return triton_weight_only.weight_only_gemv(x, w, bias, out)
        return triton_weight_only.weight_only_gemm(x, w, bias, out)
