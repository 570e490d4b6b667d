"""How well a (scale, zero point) fits a tensor: clipping, level use, SQNR and MSE.

Every number comes from ``qpass.numerics`` (quantize, dequantize, fake_quantize); nothing
here rounds on its own. Definitions, for ``x`` and its round trip ``x' = dq(q(x))``:

- ``clip_rate``: the fraction of values outside the representable range
  ``[dq(qmin), dq(qmax)]`` of their scale and zero point (they saturate);
- ``level_utilization``: the fraction of the format's levels (int8: 256; fp8: its distinct
  finite values) that ``q(x)`` uses, averaged over the qparam blocks (one per tensor, per
  channel or per group). A symmetric int8 range never uses -128, so it tops at 255/256;
- ``sqnr_db``: ``10 log10(sum x^2 / sum (x - x')^2)``, ``inf`` when the round trip is exact;
- ``mse``: ``mean((x - x')^2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch

from qpass.config import PerChannel, PerGroup, QuantSpec
from qpass.numerics import (
    Format,
    broadcast_qparams,
    dequantize,
    expand_blocks,
    get_format,
    quantize,
)
from qpass.observe.observer import Observer
from qpass.observe.sink import row_qparams


@dataclass(frozen=True)
class Diagnostics:
    clip_rate: float
    level_utilization: float
    sqnr_db: float
    mse: float


@cache
def format_levels(name: str) -> torch.Tensor:
    """Every value ``quantize`` can return for the format, ascending (float32)."""
    fmt = get_format(name)
    if not fmt.is_float:
        return torch.arange(int(fmt.qmin), int(fmt.qmax) + 1, dtype=torch.float32)
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(fmt.storage).float()
    return torch.unique(codes[torch.isfinite(codes)])  # +0 and -0 count once


def expand_qparam(t: torch.Tensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Shape observer qparams (0-d, per channel [C], per group [..., K/g], a sink-token spec's
    (sink, rest) pair [2]) to broadcast against ``x``."""
    g = spec.granularity
    if spec.sink_tokens and t.dim() == 1:  # (sink, rest) pairs: one per row of x
        return row_qparams(t, x, spec.sink_tokens)
    if isinstance(g, PerChannel) and t.dim() == 1:
        return broadcast_qparams(t, x.dim(), g.axis)
    if isinstance(g, PerGroup) and t.dim() == x.dim():
        return expand_blocks(t, x.shape)
    return t


def _blocks(t: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``t`` as [blocks, elements]: one row per qparam block."""
    g = spec.granularity
    if isinstance(g, PerChannel):
        return t.movedim(g.axis, 0).flatten(1)
    if isinstance(g, PerGroup):
        return t.reshape(-1, g.size)
    return t.reshape(1, -1)


def _utilization(q: torch.Tensor, fmt: Format, spec: QuantSpec) -> float:
    levels = format_levels(fmt.name)
    idx = torch.searchsorted(levels, _blocks(q.float(), spec).contiguous())  # [B, n]
    n_blocks, n_levels = idx.shape[0], levels.numel()
    flat = idx + torch.arange(n_blocks)[:, None] * n_levels
    used = torch.bincount(flat.flatten(), minlength=n_blocks * n_levels) > 0
    return float(used.reshape(n_blocks, n_levels).float().mean())


def diagnose(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec
) -> Diagnostics:
    """Quantization quality of ``x`` under ``scale``/``zero_point`` (see the module doc)."""
    fmt = spec.fmt
    x = x.detach().float()
    if x.numel() == 0:
        raise ValueError("diagnose got an empty tensor; give it the data the qparams are for")
    s = expand_qparam(scale, x, spec).float()
    z = expand_qparam(zero_point, x, spec)
    q = quantize(x, s, z, fmt)
    xq = dequantize(q, s, z)
    bounds = torch.tensor([fmt.qmin, fmt.qmax]).to(fmt.storage)
    lo_rep, hi_rep = dequantize(bounds[0], s, z), dequantize(bounds[1], s, z)
    clipped = (x < lo_rep) | (x > hi_rep)
    err = (x.double() - xq.double()).square().sum().item()
    signal = x.double().square().sum().item()
    sqnr = math.inf if err == 0 else (
        -math.inf if signal == 0 else 10.0 * math.log10(signal / err))
    return Diagnostics(
        clip_rate=float(clipped.float().mean()),
        level_utilization=_utilization(q, fmt, spec),
        sqnr_db=sqnr,
        mse=err / x.numel(),
    )


def diagnose_observer(x: torch.Tensor, observer: Observer) -> Diagnostics:
    """``diagnose`` with the observer's own qparams and spec."""
    scale, zero_point = observer.qparams()
    return diagnose(x, scale, zero_point, observer.spec)
