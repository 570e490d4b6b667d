"""What the machine offers the GPU kernels: CUDA, its compute capability, triton.

``TRITON_INTERPRET=1`` runs triton kernels on CPU tensors with triton's interpreter (slow,
small shapes only); qpass's tests use it to check the triton kernels without a GPU.
"""

from __future__ import annotations

import importlib.util
import os

import torch


def interpreting() -> bool:
    """True when triton kernels run in triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_why_not() -> str | None:
    """None when triton kernels can run here; else the reason."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'qpass[gpu]')"
    if interpreting():
        return None
    return cuda_why_not()


def cuda_why_not() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


def capability() -> tuple[int, int] | None:
    """Compute capability of the current CUDA device, or None without one."""
    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


def check_device(x: torch.Tensor, kernel: str, *, interpretable: bool) -> None:
    """Raise a clear error when a GPU kernel is handed tensors it cannot run on."""
    if x.is_cuda or (interpretable and interpreting()):
        return
    raise RuntimeError(
        f"qpass kernel {kernel!r} runs on CUDA tensors, but its input is on {x.device}; move "
        "the lowered model to the GPU with .to('cuda'), or lower it with backend='cpu'")
