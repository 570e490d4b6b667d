"""Random quantized linears for kernel tests, built the way qpass.convert builds them."""

from __future__ import annotations

import torch

from qpass import numerics
from qpass.config import QuantSpec
from qpass.convert.weights import quantize_weight
from qpass.lower.pattern import ActQuant, QLinear


def make_site(k: int, n: int, weight: QuantSpec, act: ActQuant | None = None,
              seed: int = 0) -> QLinear:
    """A QLinear of a random [N, K] weight quantized with ``weight`` (no graph behind it)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) / k**0.5
    return QLinear("t", "t", None, act, quantize_weight(w, weight), None, None, "matmul")


def dynamic(fmt: str = "int8") -> ActQuant:
    return ActQuant(fmt, symmetric=True, dynamic=True)


def static(fmt: str, x: torch.Tensor) -> ActQuant:
    """Per-tensor symmetric qparams that cover ``x`` (as a MinMax observer would give)."""
    f = numerics.get_format(fmt)
    scale, zero = numerics.qparams_from_range(x.min(), x.max(), f, symmetric=True)
    return ActQuant(fmt, symmetric=True, dynamic=False, scale=scale, zero_point=zero)


def activations(m: int, k: int, dtype=torch.float32, seed: int = 1, device="cpu") -> torch.Tensor:
    """Rows of different magnitudes, with a few large columns, like LLM activations."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g).add(0.1) * 3
    x[:, :: max(1, k // 3)] *= 8
    return x.to(device=device, dtype=dtype)


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref|| / ||ref|| in float64 (Frobenius)."""
    return float((y.double() - ref.double()).norm() / ref.double().norm())


def poisoned(m: int, n: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """An output buffer full of NaN: any element a kernel fails to write shows up."""
    return torch.full((m, n), float("nan"), dtype=dtype, device=device)
