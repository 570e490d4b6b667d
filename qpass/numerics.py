"""The one place where qpass's quantization arithmetic lives.

Observers, convert, the kernels' CPU references and the ONNX checks all call these
functions; nothing else re-derives rounding or ranges. Semantics follow ONNX
QuantizeLinear / DequantizeLinear:

    q  = saturate(round_half_to_even(x / scale) + zero_point)      (integer formats)
    q  = saturate_to_format(x / scale)                             (fp8: RNE cast)
    dq = (q - zero_point) * scale

Shapes: ``scale`` and ``zero_point`` are either 0-d (per tensor) or shaped to broadcast
against ``x`` (per channel / per token / per group; see ``broadcast_qparams``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Format:
    """A number format qpass can quantize to."""

    name: str
    kind: str  # "int" or "float"
    qmin: float
    qmax: float
    storage: torch.dtype  # the torch dtype that holds quantized values
    bits: int

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def signed(self) -> bool:
        return self.qmin < 0


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("int8", "int", -128, 127, torch.int8, 8),
        Format("uint8", "int", 0, 255, torch.uint8, 8),
        Format("int4", "int", -8, 7, torch.int8, 4),
        Format("uint4", "int", 0, 15, torch.uint8, 4),
        # 3-bit codes (GPTQ/AWQ W3A16) live in the 4-bit storage: ONNX and the kernels
        # read them as int4/uint4 values that never leave the 3-bit range
        Format("int3", "int", -4, 3, torch.int8, 3),
        Format("uint3", "int", 0, 7, torch.uint8, 3),
        Format("fp8_e4m3", "float", -448.0, 448.0, torch.float8_e4m3fn, 8),
        Format("fp8_e5m2", "float", -57344.0, 57344.0, torch.float8_e5m2, 8),
    )
}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(
            f"unknown quantization format {name!r}; qpass knows: {', '.join(FORMATS)}"
        ) from None


# The smallest scale qpass hands out: keeps x / scale finite for any float32 x that an
# observer saw, and keeps tiny-but-nonzero tensors representable.
MIN_SCALE = torch.finfo(torch.float32).tiny


def qparams_from_range(
    lo: torch.Tensor, hi: torch.Tensor, fmt: Format, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that map the range [lo, hi] onto ``fmt``.

    ``lo``/``hi`` may be any shape (one entry per channel, token or group). The range is
    widened to contain 0 so that zero is exactly representable. An all-zero range gets
    scale 1 (every value quantizes to the zero point exactly); scales never go below
    ``MIN_SCALE``. Symmetric ranges on unsigned formats are centered on the middle code
    (uint8: zero point 128, scale amax / 127). Zero points are returned in ``fmt.storage``
    (float formats: float32 0).
    """
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError(
            "cannot derive a scale from a non-finite range "
            f"(min={lo.min().item()}, max={hi.max().item()}); the observed tensor holds NaN or "
            "Inf: check the calibration data and the layer that produced it"
        )
    if fmt.is_float or symmetric:
        # unsigned formats center a symmetric range on the middle code (uint8: 128)
        mid = 0 if fmt.is_float or fmt.signed else (fmt.qmax + 1) // 2
        amax = torch.maximum(-lo, hi)
        scale = amax / (fmt.qmax - mid)
        zero_point = torch.full_like(scale, mid)
    else:
        scale = (hi - lo) / (fmt.qmax - fmt.qmin)
        zero_point = None
    empty = scale == 0
    scale = torch.where(empty, torch.ones_like(scale), scale.clamp(min=MIN_SCALE))
    if zero_point is None:
        zero_point = (fmt.qmin - torch.round(lo / scale)).clamp(fmt.qmin, fmt.qmax)
        zero_point = torch.where(empty, torch.zeros_like(zero_point), zero_point)
    return scale, zero_point_storage(zero_point, fmt)


def zero_point_storage(zero_point: torch.Tensor, fmt: Format) -> torch.Tensor:
    if fmt.is_float:
        return torch.zeros_like(zero_point, dtype=torch.float32)
    return zero_point.round().to(fmt.storage)


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, fmt: Format
) -> torch.Tensor:
    """ONNX QuantizeLinear: round half to even, saturate; returns ``fmt.storage`` values."""
    y = x.float() / scale
    if fmt.is_float:
        return y.clamp(fmt.qmin, fmt.qmax).to(fmt.storage)
    y = torch.round(y) + zero_point.float()
    return y.clamp(fmt.qmin, fmt.qmax).to(fmt.storage)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """ONNX DequantizeLinear, in float32."""
    if q.dtype.is_floating_point:
        return q.float() * scale
    return (q.float() - zero_point.float()) * scale


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, fmt: Format
) -> torch.Tensor:
    """dequantize(quantize(x)): the value the quantized model computes with."""
    return dequantize(quantize(x, scale, zero_point, fmt), scale, zero_point).to(x.dtype)


def broadcast_qparams(t: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """Shape a 1-D per-axis parameter to broadcast against a tensor of rank ``ndim``."""
    if t.dim() == 0:
        return t
    axis = axis % ndim
    shape = [1] * ndim
    shape[axis] = t.numel()
    return t.reshape(shape)


def expand_blocks(t: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Repeat blocked qparams (one entry per block of an axis) up to ``shape``.

    ``t`` has the rank of ``shape``; along each axis its size divides the tensor's, and each
    entry covers ``shape[d] // t.shape[d]`` consecutive elements (ONNX blocked quantization).
    Axes of size 1 broadcast.
    """
    for d, (n, m) in enumerate(zip(shape, t.shape, strict=True)):
        if m not in (1, n):
            if n % m:
                raise ValueError(f"qparams of shape {tuple(t.shape)} do not tile a tensor of "
                                 f"shape {tuple(shape)} along axis {d}")
            t = t.repeat_interleave(n // m, dim=d)
    return t


def reduce_range(x: torch.Tensor, keep_axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x``: over everything (``keep_axis=None``) or per index of one axis."""
    if keep_axis is None:
        return x.min(), x.max()
    moved = x.movedim(keep_axis, 0).reshape(x.shape[keep_axis], -1)
    return moved.amin(dim=1), moved.amax(dim=1)


def group_view(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """View the last axis of ``x`` [..., K] as groups: [..., K // group_size, group_size]."""
    k = x.shape[-1]
    if k % group_size:
        raise ValueError(
            f"group size {group_size} does not divide the last axis ({k}) of a tensor of shape "
            f"{tuple(x.shape)}; choose a group size that divides {k}"
        )
    return x.reshape(*x.shape[:-1], k // group_size, group_size)


def dynamic_qparams_per_token(
    x: torch.Tensor, fmt: Format, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (last axis reduced) scale and zero point computed from ``x`` at run time.

    Returns tensors shaped [..., 1] that broadcast against ``x``.
    """
    lo = x.amin(dim=-1, keepdim=True)
    hi = x.amax(dim=-1, keepdim=True)
    return qparams_from_range(lo, hi, fmt, symmetric)
