"""Quantize one weight matrix the way the converted graph stores it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qpass import numerics
from qpass.config import PerChannel, PerGroup, PerTensor, QuantSpec
from qpass.observe import make_observer


@dataclass(frozen=True)
class QuantizedWeight:
    """A weight stored as [K, N] (in_features x out_features), ready for ``x @ dq(q)``.

    ``scale``/``zero_point``: 0-d (per tensor), [N] with ``axis=1`` (per output channel), or
    [K/g, N] (per group: blocks of g input features, ONNX blocked layout along axis 0).
    """

    q: torch.Tensor  # [K, N], spec.fmt.storage
    scale: torch.Tensor
    zero_point: torch.Tensor
    axis: int
    format: str

    def dequantize(self) -> torch.Tensor:
        from qpass import ops

        return ops.dequantize(self.q, self.scale, self.zero_point, self.axis, self.format)


def quantize_weight(w: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    """``w``: [N, K] (out, in). Returns the [K, N] storage with its qparams."""
    g = spec.granularity
    if isinstance(g, PerChannel) and g.axis not in (0, -2):
        raise ValueError(
            f"weight spec PerChannel(axis={g.axis}) is not supported: qpass scales weights per "
            "output channel, PerChannel(axis=0) of the [out_features, in_features] weight"
        )
    w = w.detach().float()
    if not torch.isfinite(w).all():
        raise ValueError("weight holds NaN or Inf; qpass cannot quantize it")
    observer = make_observer(spec)
    observer.update(w)
    scale, zp = observer.qparams()  # per tensor: 0-d; per channel: [N]; per group: [N, K/g]
    if isinstance(g, PerTensor):
        q = numerics.quantize(w, scale, zp, spec.fmt)
        return QuantizedWeight(q.T.contiguous(), scale, zp, 1, spec.format)
    if isinstance(g, PerChannel):
        q = numerics.quantize(w, scale[:, None], zp[:, None], spec.fmt)
        return QuantizedWeight(q.T.contiguous(), scale, zp, 1, spec.format)
    if isinstance(g, PerGroup):
        q = numerics.quantize(w, numerics.expand_blocks(scale, w.shape),
                              numerics.expand_blocks(zp, w.shape), spec.fmt)
        return QuantizedWeight(q.T.contiguous(), scale.T.contiguous(), zp.T.contiguous(), 0,
                               spec.format)
    raise ValueError(f"weight granularity {g!r} is not supported; use PerChannel(0), PerGroup "
                     "or PerTensor")
