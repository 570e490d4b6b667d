"""Percentile: clip the range at a percentile of the data, read from a streaming histogram.

Symmetric specs clip at the ``percentile`` of ``|x|``; asymmetric specs clip both tails, the
lower at ``100 - percentile`` and the upper at ``percentile`` of ``x``. The percentile is read
from the histogram's cumulative counts, interpolating linearly inside the bin that holds it,
so it is within one bin width of the exact percentile of the raw data.

Registered names: ``"percentile"`` (99.99, TensorRT's default) and the presets
``"percentile_99"``, ``"percentile_99.9"``, ``"percentile_99.99"``, ``"percentile_99.999"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qpass.config import QuantSpec
from qpass.observe.histogram import HistogramObserver, check_bins, symmetric_amax
from qpass.observe.observer import OBSERVERS


@dataclass(frozen=True)
class PercentileConfig:
    percentile: float = 99.99
    bins: int = 2048  # per side of zero

    def __post_init__(self) -> None:
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 100:
            raise ValueError(f"PercentileConfig.percentile={p!r} is not valid; allowed: a number "
                             "in (0, 100], e.g. 99.9 or 99.99")
        check_bins("PercentileConfig", self.bins)


def histogram_quantile(
    counts: torch.Tensor, left: torch.Tensor, width: torch.Tensor, q: float
) -> torch.Tensor:
    """The q-quantile (q in [0, 1]) of each row of a histogram.

    counts: [C, B] over bins [left + j * width, left + (j + 1) * width); left, width: [C].
    Like ``torch.quantile``, the quantile sits at rank q * (N - 1) among the N sorted values
    (0-based); the bin counted to q * (N - 1) + 0.5 holds the nearest order statistic. Inside
    that bin, values are taken as spread evenly. Returns [C].
    """
    cum = counts.cumsum(dim=1)  # [C, B]
    target = q * (cum[:, -1:] - 1) + 0.5  # [C, 1]
    j = torch.searchsorted(cum, target).clamp(max=counts.shape[1] - 1)  # [C, 1]
    c_j = counts.gather(1, j)
    before = cum.gather(1, j) - c_j
    frac = torch.where(c_j > 0, (target - before) / c_j.clamp(min=1e-300), 0.0).clamp(0, 1)
    return (left[:, None] + (j + frac) * width[:, None]).squeeze(1)


@OBSERVERS.register("percentile")
class PercentileObserver(HistogramObserver):
    """Clip at a percentile of the observed data (per tensor, or per channel / group)."""

    default_config = PercentileConfig()

    def __init__(self, spec: QuantSpec, config: PercentileConfig | None = None) -> None:
        super().__init__(spec, config)

    def _clip_range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hist
        q = self.config.percentile / 100
        if q == 1:  # the 100th percentile: the exact observed range
            assert h.lo is not None and h.hi is not None
            return (h.lo, h.hi) if not spec.symmetric else (-symmetric_amax(h), symmetric_amax(h))
        if spec.symmetric:
            zero = torch.zeros_like(h.width)
            t = histogram_quantile(h.abs_counts(), zero, h.width, q)
            t = torch.minimum(t.float(), symmetric_amax(h))
            return -t, t
        assert h.counts is not None
        lo = histogram_quantile(h.counts, -h.radius, h.width, 1 - q)
        hi = histogram_quantile(h.counts, -h.radius, h.width, q)
        return lo, hi


def _preset(percentile: float) -> type[PercentileObserver]:
    name = f"percentile_{percentile:g}"
    cls = type(f"PercentileObserver_{percentile:g}".replace(".", "_"), (PercentileObserver,),
               {"default_config": PercentileConfig(percentile),
                "__doc__": f"PercentileObserver at the {percentile:g}th percentile."})
    OBSERVERS.add(name, cls)
    return cls


PRESETS: dict[float, type[PercentileObserver]] = {
    p: _preset(p) for p in (99.0, 99.9, 99.99, 99.999)
}
