"""Lowering: the converted graph's Q/DQ linears become fused kernel calls.

    qmodel = qpass.convert(prepared)
    fast = qpass.lower(qmodel.to("cuda"), backend="cuda")   # or backend="cpu": the references
    fast.meta["qpass"].reports["lower"]                      # which kernel each linear got, and why

Kernels register in ``KERNELS`` (entry-point group ``qpass.kernels``); each family has a CPU
reference (``qpass.lower.reference``) that its GPU kernels are tested against.
"""

from qpass.lower import fp8_gemm, int8_gemm, llm_int8, reference, weight_only  # noqa: F401
from qpass.lower.kernel import KERNELS, Kernel, LoweredLinear
from qpass.lower.lower import LoweringReport, SiteLowering, choose_kernel, lower
from qpass.lower.pattern import ActQuant, QLinear, find_qlinears

__all__ = ["KERNELS", "ActQuant", "Kernel", "LoweredLinear", "LoweringReport", "QLinear",
           "SiteLowering", "choose_kernel", "find_qlinears", "lower"]
