"""CPU references of every kernel family, from the converted graph's numerics.

Each reference reads its family's packed layout, quantizes activations with
``qpass.numerics`` exactly as ``qpass.ops`` does in the converted graph, accumulates exactly
(integer and fp8 products summed in float64) and scales in float64. The result is the
converted graph's value up to float32 rounding; the GPU kernels are tested against it.
The references are plain torch ops, so they also run on CUDA: ``qpass.lower`` falls back to
them where no GPU kernel fits.
"""

from __future__ import annotations

import torch

from qpass import numerics
from qpass.lower.families import (
    pack_w8a8,
    pack_weight_only,
    weight_only_offset,
    why_not_w8a8,
    why_not_weight_only,
)
from qpass.lower.kernel import KERNELS, Kernel
from qpass.lower.packing import dequantize_groups, unpack_int4
from qpass.lower.pattern import QLinear


def quantize_activation(x: torch.Tensor, w: dict[str, torch.Tensor],
                        fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [M, K], scale [M, 1] or 0-d): per token at run time, or the static ``x_scale``."""
    f = numerics.get_format(fmt)
    if "x_scale" in w:
        scale = w["x_scale"]
        zero = torch.zeros((), dtype=torch.float32 if f.is_float else f.storage,
                           device=x.device)
    else:
        scale, zero = numerics.dynamic_qparams_per_token(x.float(), f, symmetric=True)
    return numerics.quantize(x, scale, zero, f), scale


def w8a8_reference(x: torch.Tensor, w: dict[str, torch.Tensor], bias: torch.Tensor | None,
                   fmt: str) -> torch.Tensor:
    """y [M, N] float64 = (q_x @ W_q^T) * s_x * s_w (+ bias); x: [M, K], w_q: [N, K]."""
    q_x, s_x = quantize_activation(x, w, fmt)
    acc = q_x.double() @ w["w_q"].double().T  # exact: |acc| < 2^53
    y = acc * s_x.double() * w["w_scale"].double()
    return y if bias is None else y + bias.double()


def weight_only_codes(w: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """[K, N] integer codes of a packed weight-only layout."""
    return unpack_int4(w["w_packed"], n) if "w_packed" in w else w["w_q"]


def weight_only_weight(w: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dequantized weight [K, N] float32: the converted graph's ``dequantize(W_q)``."""
    n = w["w_scale"].shape[1]
    zero = w.get("w_zero")
    if zero is None:
        zero = torch.full_like(w["w_scale"], float(weight_only_offset(w)))
    return dequantize_groups(weight_only_codes(w, n), w["w_scale"], zero)


def weight_only_reference(x: torch.Tensor, w: dict[str, torch.Tensor],
                          bias: torch.Tensor | None) -> torch.Tensor:
    """y [M, N] float64 = x @ dq(W) (+ bias)."""
    y = x.double() @ weight_only_weight(w).double()
    return y if bias is None else y + bias.double()


class _Reference(Kernel):
    backend = "cpu"
    priority = 0

    def run(self, x: torch.Tensor, w: dict[str, torch.Tensor], bias: torch.Tensor | None,
            out: torch.Tensor) -> torch.Tensor:
        return out.copy_(self.reference(x, w, bias))

    def reference(self, x: torch.Tensor, w: dict[str, torch.Tensor],
                  bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


@KERNELS.register("w8a8_int8.reference")
class Int8Reference(_Reference):
    """W8A8 int8: per-token (or static per-tensor) int8 activations, per-channel weights."""

    family = "w8a8_int8"

    def why_not(self, site: QLinear) -> str | None:
        return why_not_w8a8(site, "int8")

    def pack(self, site: QLinear) -> dict[str, torch.Tensor]:
        return pack_w8a8(site)

    def reference(self, x, w, bias):
        return w8a8_reference(x, w, bias, "int8")


@KERNELS.register("w8a8_fp8.reference")
class Fp8Reference(_Reference):
    """W8A8 fp8 e4m3: per-token (or static per-tensor) activations, per-channel weights."""

    family = "w8a8_fp8"

    def why_not(self, site: QLinear) -> str | None:
        return why_not_w8a8(site, "fp8_e4m3")

    def pack(self, site: QLinear) -> dict[str, torch.Tensor]:
        return pack_w8a8(site)

    def reference(self, x, w, bias):
        return w8a8_reference(x, w, bias, "fp8_e4m3")


@KERNELS.register("weight_only.reference")
class WeightOnlyReference(_Reference):
    """W8A16 / W4A16: 8- or 4-bit weights per channel or per group, float activations."""

    family = "weight_only"

    def why_not(self, site: QLinear) -> str | None:
        return why_not_weight_only(site)

    def pack(self, site: QLinear) -> dict[str, torch.Tensor]:
        return pack_weight_only(site)

    def reference(self, x, w, bias):
        return weight_only_reference(x, w, bias)
