"""Kernels that compute a quantized linear, and the registry ``qpass.lower`` chooses from.

A kernel says whether it can run a ``QLinear`` (``why_not``), packs the converted weight into
its own layout once (``pack``), and computes ``y = x @ dq(W) (+ bias)`` into a caller-given
output at run time (``run``). Third-party kernels register through the ``qpass.kernels``
entry-point group::

    @KERNELS.register("w8a8_int8.my_gemm")
    class MyGemm(Kernel):
        family = "w8a8_int8"; backend = "cuda"; priority = 20
        ...

``backend="cpu"`` kernels are the references: plain torch ops that follow ``qpass.numerics``
exactly. They run on any device, so ``qpass.lower`` also falls back to them on CUDA.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from qpass.lower.pattern import QLinear
from qpass.registry import Registry

BACKENDS = ("cuda", "cpu")
FAMILIES = ("w8a8_int8", "w8a8_fp8", "weight_only", "llm_int8")


class Kernel(ABC):
    """One way to compute a family of quantized linears on one backend."""

    family: ClassVar[str]
    backend: ClassVar[str]
    priority: ClassVar[int] = 0  # among the kernels that fit a site, the highest wins

    @abstractmethod
    def why_not(self, site: QLinear) -> str | None:
        """None when this kernel computes ``site`` exactly as its reference; else the reason."""

    @abstractmethod
    def pack(self, site: QLinear) -> dict[str, torch.Tensor]:
        """The weight (and static activation qparams) in this kernel's layout."""

    @abstractmethod
    def run(self, x: torch.Tensor, w: dict[str, torch.Tensor], bias: torch.Tensor | None,
            out: torch.Tensor) -> torch.Tensor:
        """x: [M, K] float; w: what ``pack`` gave; bias: [N] or None.

        Writes y [M, N] into ``out`` (the caller's buffer, of the dtype it wants) and returns it.
        """


KERNELS: Registry[type[Kernel]] = Registry("kernel", "qpass.kernels")


def kernels_for(family: str, backend: str) -> list[tuple[str, Kernel]]:
    """(name, kernel) of one family and backend, best first."""
    found = []
    for name in KERNELS.names():
        cls = KERNELS.get(name)
        if cls.family == family and cls.backend == backend:
            found.append((name, cls()))
    return sorted(found, key=lambda nk: (-nk[1].priority, nk[0]))


class LoweredLinear(nn.Module):
    """A QLinear replaced by one kernel call; holds the packed weight as buffers."""

    def __init__(self, kernel_name: str, kernel: Kernel, packed: dict[str, torch.Tensor],
                 in_features: int, out_features: int) -> None:
        super().__init__()
        self.kernel_name = kernel_name
        self.kernel = kernel
        self.in_features = in_features
        self.out_features = out_features
        self._packed_names = tuple(packed)
        for name, t in packed.items():
            self.register_buffer(name, t)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # x: [..., K] -> y: [..., N], in x's dtype (the model's activation dtype)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        out = torch.empty(x2.shape[0], self.out_features, dtype=x.dtype, device=x.device)
        w = {n: getattr(self, n) for n in self._packed_names}
        return self.kernel.run(x2, w, bias, out).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"kernel={self.kernel_name}, in_features={self.in_features}, "
                f"out_features={self.out_features}")
