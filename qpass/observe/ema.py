"""EMA MinMax: an exponential moving average of each batch's minimum and maximum.

Per batch ``t`` with range ``[lo_t, hi_t]`` (per tensor, or per index of the observed axis)::

    lo = lo_1                                   (first batch)
    lo = momentum * lo + (1 - momentum) * lo_t  (every later batch; the same for hi)

Unlike MinMax, one outlier batch moves the range by only ``(1 - momentum)`` of its excess,
so the range follows the typical batch rather than the worst one.

``merge`` is an approximation: the EMA depends on the order of the batches, and two observers
that saw their streams side by side (other processes, other ranks) have no order between them.
It returns the count-weighted average of the two averages,
``lo = (n_a * lo_a + n_b * lo_b) / (n_a + n_b)`` with ``n`` the batches each saw, which is
commutative and associative, so any grouping of merges gives the same range. It equals the EMA
of the concatenated stream only when both streams have the same range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qpass.config import QuantSpec
from qpass.numerics import qparams_from_range, reduce_range
from qpass.observe.checks import check_finite, no_data_error
from qpass.observe.observer import OBSERVERS, Observer, shape_qparams


@dataclass(frozen=True)
class EMAConfig:
    """``momentum``: the weight of the running range at each update, in [0, 1).

    0 keeps only the latest batch's range; values near 1 average over about
    ``1 / (1 - momentum)`` batches. 1 is refused: the range would freeze at the first batch
    and ignore every later one.
    """

    momentum: float = 0.9

    def __post_init__(self) -> None:
        m = self.momentum
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 1.0:
            raise ValueError(
                f"EMAConfig.momentum={m!r} is not valid; allowed: a number in [0, 1) "
                "(0 = latest batch only, 0.9 = about the last 10 batches; 1 would never update)"
            )


@OBSERVERS.register("ema_minmax")
class EMAMinMaxObserver(Observer):
    def __init__(self, spec: QuantSpec, config: EMAConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config or EMAConfig()
        self.lo: torch.Tensor | None = None  # [C] per channel / group, or 0-d per tensor
        self.hi: torch.Tensor | None = None
        self.shape: torch.Size | None = None  # shape of the last tensor seen

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        check_finite(self, x)
        view, axis = self.view(x)
        lo, hi = reduce_range(view, axis)
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        else:
            if lo.shape != self.lo.shape:
                raise ValueError(
                    f"{type(self).__name__} tracks {tuple(self.lo.shape)} ranges but got a "
                    f"tensor of shape {tuple(x.shape)} that gives {tuple(lo.shape)}"
                )
            m = self.config.momentum
            self.lo = m * self.lo + (1.0 - m) * lo
            self.hi = m * self.hi + (1.0 - m) * hi
        self.shape = x.shape
        self.count += 1

    def merge(self, other: Observer) -> Observer:
        """Count-weighted average of the two moving averages (see the module docstring)."""
        self._check_merge(other)
        assert isinstance(other, EMAMinMaxObserver)
        if other.lo is None or other.hi is None:
            return self
        if self.lo is None or self.hi is None:
            self.lo, self.hi, self.shape = other.lo.clone(), other.hi.clone(), other.shape
        else:
            w = other.count / (self.count + other.count)
            self.lo = (1.0 - w) * self.lo + w * other.lo
            self.hi = (1.0 - w) * self.hi + w * other.hi
        self.count += other.count
        return self

    def qparams(self, spec: QuantSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        spec = spec or self.spec
        if self.lo is None or self.hi is None or self.shape is None:
            raise no_data_error(self)
        scale, zp = qparams_from_range(self.lo, self.hi, spec.fmt, spec.symmetric)
        return shape_qparams(scale, self.shape, spec), shape_qparams(zp, self.shape, spec)
