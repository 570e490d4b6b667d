"""Quantize one weight matrix the way the converted graph stores it.

Per-group weights whose group size g does not divide the K input features get a shorter last
group (K mod g features: SmolLM2's 576 = 4 x 128 + 64). Their parameters are stored at the
block size gcd(K, g), each group's repeated over its blocks, so every consumer (``qpass.ops``,
ONNX ``block_size``, the kernels) still sees uniform blocks.
"""

from __future__ import annotations

import dataclasses
import math
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
    if not isinstance(g, PerGroup):
        observer = make_observer(spec)
        observer.update(w)
        scale, zp = observer.qparams()  # per tensor: 0-d; per channel: [N]
    if isinstance(g, PerTensor):
        q = numerics.quantize(w, scale, zp, spec.fmt)
        return QuantizedWeight(q.T.contiguous(), scale, zp, 1, spec.format)
    if isinstance(g, PerChannel):
        q = numerics.quantize(w, scale[:, None], zp[:, None], spec.fmt)
        return QuantizedWeight(q.T.contiguous(), scale, zp, 1, spec.format)
    if isinstance(g, PerGroup):
        scale, zp = group_qparams(w, spec)  # [N, G]
        scale, zp = to_blocks(scale, w.shape[1], g.size), to_blocks(zp, w.shape[1], g.size)
        q = numerics.quantize(w, numerics.expand_blocks(scale, w.shape),
                              numerics.expand_blocks(zp, w.shape), spec.fmt)
        return QuantizedWeight(q.T.contiguous(), scale.T.contiguous(), zp.T.contiguous(), 0,
                               spec.format)
    raise ValueError(f"weight granularity {g!r} is not supported; use PerChannel(0), PerGroup "
                     "or PerTensor")


MIN_BLOCK = 16  # the smallest block ONNX Runtime's MatMulNBits and the kernels take


def block_size(k: int, group: int) -> int:
    """The stored block size of groups of ``group`` over ``k`` features: ``group`` when it
    divides ``k``, else gcd(k, group) (the last group is shorter)."""
    if k % group == 0:
        return group
    block = math.gcd(k, group)
    if block < min(group, MIN_BLOCK):
        raise ValueError(
            f"group size {group} does not divide {k} input features, and the shorter last "
            f"group ({k % group} features) would need blocks of gcd({k}, {group}) = {block}; "
            f"choose a group size that divides {k}, or one sharing a factor of at least "
            f"{MIN_BLOCK} with it")
    return block


def group_qparams(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group parameters [N, G] of ``w`` [N, K], G = ceil(K / g), from ``spec``'s observer;
    the last group is shorter when g does not divide K."""
    g = spec.granularity
    assert isinstance(g, PerGroup)
    k = w.shape[1]
    block_size(k, g.size)  # fail early on groups that cannot be stored
    full = k // g.size * g.size
    parts = []
    if full:
        observer = make_observer(spec)
        observer.update(w[:, :full])
        parts.append(observer.qparams())  # [N, full / g]
    if full < k:
        observer = make_observer(dataclasses.replace(spec, granularity=PerChannel(0)))
        observer.update(w[:, full:])
        s, z = observer.qparams()
        parts.append((s[:, None], z[:, None]))
    return torch.cat([s for s, _ in parts], 1), torch.cat([z for _, z in parts], 1)


def to_blocks(t: torch.Tensor, k: int, group: int) -> torch.Tensor:
    """Per-group parameters [N, G] repeated to the stored blocks [N, K / block_size]."""
    block = block_size(k, group)
    if block == group:
        return t
    sizes = [min(group, k - j) // block for j in range(0, k, group)]
    return t.repeat_interleave(torch.tensor(sizes), dim=1)
