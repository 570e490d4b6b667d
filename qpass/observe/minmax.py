"""MinMax: the running minimum and maximum. Merging is exact."""

from __future__ import annotations

import torch

from qpass.config import QuantSpec
from qpass.numerics import qparams_from_range, reduce_range
from qpass.observe.observer import OBSERVERS, Observer, shape_qparams


@OBSERVERS.register("minmax")
class MinMaxObserver(Observer):
    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.shape: torch.Size | None = None

    def update(self, x: torch.Tensor) -> None:
        view, axis = self.view(x.detach().float())
        lo, hi = reduce_range(view, axis)
        if self.lo is None:
            self.lo, self.hi, self.shape = lo, hi, x.shape
        else:
            if lo.shape != self.lo.shape:
                raise ValueError(
                    f"{type(self).__name__} tracks {tuple(self.lo.shape)} ranges but got a tensor "
                    f"of shape {tuple(x.shape)} that gives {tuple(lo.shape)}"
                )
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        self.count += 1

    def merge(self, other: Observer) -> Observer:
        self._check_merge(other)
        assert isinstance(other, MinMaxObserver)
        if other.lo is None:
            return self
        if self.lo is None:
            self.lo, self.hi, self.shape = other.lo.clone(), other.hi.clone(), other.shape
        else:
            self.lo = torch.minimum(self.lo, other.lo)
            self.hi = torch.maximum(self.hi, other.hi)
        self.count += other.count
        return self

    def qparams(self, spec: QuantSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        spec = spec or self.spec
        if self.lo is None:
            raise RuntimeError(
                "observer saw no data: run qpass.calibrate with at least one batch that reaches "
                "this layer before convert"
            )
        scale, zp = qparams_from_range(self.lo, self.hi, spec.fmt, spec.symmetric)
        return shape_qparams(scale, self.shape, spec), shape_qparams(zp, self.shape, spec)
