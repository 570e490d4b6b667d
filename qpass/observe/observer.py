"""The Observer interface and its registry.

An observer streams statistics of one tensor with bounded memory (``update``), combines with
another observer of the same spec as if it had seen both streams (``merge``), and turns what it
saw into a scale and zero point (``qparams``). Plugins register with ``@OBSERVERS.register``
or the ``qpass.observers`` entry-point group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from qpass.config import PerChannel, PerGroup, PerTensor, PerToken, QuantSpec
from qpass.numerics import group_view
from qpass.registry import Registry

OBSERVERS: Registry[type[Observer]] = Registry("observer", "qpass.observers")


class Observer(ABC):
    """Statistics of one tensor under one QuantSpec."""

    def __init__(self, spec: QuantSpec) -> None:
        if isinstance(spec.granularity, PerToken):
            raise ValueError(
                f"observer {type(self).__name__} got a PerToken spec; per-token ranges are "
                "computed at run time (dynamic=True) and need no observer"
            )
        self.spec = spec
        self.count = 0  # tensors seen

    @abstractmethod
    def update(self, x: torch.Tensor) -> None:
        """Fold one tensor into the statistics."""

    @abstractmethod
    def merge(self, other: Observer) -> Observer:
        """Fold ``other``'s statistics into this one, in place; returns self."""

    @abstractmethod
    def qparams(self, spec: QuantSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) for ``spec`` (default: the spec it observes for)."""

    def _check_merge(self, other: Observer) -> None:
        if type(other) is not type(self) or other.spec.granularity != self.spec.granularity:
            raise ValueError(
                f"cannot merge {type(other).__name__}({other.spec.granularity}) into "
                f"{type(self).__name__}({self.spec.granularity}): merge observers of one type "
                "and granularity"
            )

    def view(self, x: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        """``x`` reshaped so that statistics are kept per index of the returned axis
        (``None``: per tensor). Per group views [..., K] as [..., K/g, g] and flattens the
        leading axes, keeping one entry per (row, group)."""
        g = self.spec.granularity
        if isinstance(g, PerTensor):
            return x, None
        if isinstance(g, PerChannel):
            if not -x.dim() <= g.axis < x.dim():
                raise ValueError(
                    f"PerChannel(axis={g.axis}) does not fit a tensor of shape {tuple(x.shape)}"
                )
            return x, g.axis % x.dim()
        if isinstance(g, PerGroup):
            grouped = group_view(x, g.size)  # [..., K/g, g]
            return grouped.reshape(-1, g.size), 0  # [rows*K/g, g]: one range per group
        raise TypeError(f"unsupported granularity {g!r}")


def shape_qparams(t: torch.Tensor, x_shape: torch.Size, spec: QuantSpec) -> torch.Tensor:
    """Give per-group qparams the shape [..., K/g] of the tensor they describe."""
    g = spec.granularity
    if isinstance(g, PerGroup) and t.dim() > 0:
        return t.reshape(*x_shape[:-1], x_shape[-1] // g.size)
    return t


def make_observer(spec: QuantSpec) -> Observer:
    """The registered observer ``spec.observer`` (a ``SinkObserver`` of two of them for a
    spec with sink tokens)."""
    if spec.sink_tokens:
        from qpass.observe.sink import SinkObserver

        return SinkObserver(spec)  # its two inner observers look the name up
    return OBSERVERS.get(spec.observer)(spec)
