"""MSE: the clip range that minimizes the expected squared quantization error.

The error of a candidate range is estimated from the two-sided histogram: every bin's count
sits at its center, and the centers go through ``numerics.fake_quantize`` with the
candidate's ``qparams_from_range`` (so int8/int4/uint and fp8 grids are modelled exactly as
convert will quantize). Candidates shrink the observed range by a factor alpha:
symmetric ``[-alpha * amax, alpha * amax]``, asymmetric ``[alpha * min, alpha * max]``.
A coarse grid of ``grid`` alphas over (0, 1] is refined by ``grid`` more between the
coarse optimum's neighbours (cost: 2 * grid evaluations of 2 * bins centers per row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qpass.config import QuantSpec
from qpass.numerics import fake_quantize, qparams_from_range
from qpass.observe.histogram import HistogramObserver, check_bins, symmetric_amax
from qpass.observe.observer import OBSERVERS

BLOCK = 2**21  # rows * candidates * bins evaluated at once (bounded temporaries)


@dataclass(frozen=True)
class MSEConfig:
    bins: int = 2048  # per side of zero
    grid: int = 100  # alphas in the coarse grid, and again in the refinement

    def __post_init__(self) -> None:
        check_bins("MSEConfig", self.bins)
        if not isinstance(self.grid, int) or not 4 <= self.grid <= 10000:
            raise ValueError(f"MSEConfig.grid={self.grid!r} is not valid; allowed: an integer "
                             "from 4 to 10000 (e.g. 100)")


def expected_error(
    centers: torch.Tensor, counts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
    spec: QuantSpec,
) -> torch.Tensor:
    """Sum of count * (center - fq(center))**2 for each row and candidate range.

    centers, counts: [C, B]; lo, hi: [C, K] candidate ranges. Returns [C, K].
    """
    scale, zp = qparams_from_range(lo, hi, spec.fmt, spec.symmetric)  # [C, K]
    out = torch.empty(lo.shape, dtype=torch.float64)
    step = max(1, BLOCK // max(1, lo.shape[1] * centers.shape[1]))
    for r in range(0, centers.shape[0], step):
        x = centers[r:r + step, None, :]  # [c, 1, B]
        fq = fake_quantize(x, scale[r:r + step, :, None], zp[r:r + step, :, None], spec.fmt)
        err = (fq.double() - x.double()).square()  # [c, K, B]
        out[r:r + step] = (err * counts[r:r + step, None, :]).sum(dim=-1)
    return out


def best_alpha(centers: torch.Tensor, counts: torch.Tensor, lo: torch.Tensor,
               hi: torch.Tensor, spec: QuantSpec, grid: int) -> torch.Tensor:
    """The alpha [C] in (0, 1] whose range [alpha * lo, alpha * hi] has the least error."""
    c = counts.shape[0]
    alphas = torch.arange(1, grid + 1, dtype=torch.float32).expand(c, grid) / grid  # [C, K]
    for _ in range(2):  # coarse grid, then a finer one around its optimum
        err = expected_error(centers, counts, alphas * lo[:, None], alphas * hi[:, None], spec)
        k = err.argmin(dim=1, keepdim=True)  # [C, 1]
        best = alphas.gather(1, k)  # [C, 1]
        lo_a = alphas.gather(1, (k - 1).clamp(min=0))
        hi_a = alphas.gather(1, (k + 1).clamp(max=alphas.shape[1] - 1))
        frac = torch.linspace(0, 1, grid)[None, :]  # [1, K]
        alphas = torch.cat([best, lo_a + (hi_a - lo_a) * frac], dim=1)  # keep the best
    err = expected_error(centers, counts, alphas * lo[:, None], alphas * hi[:, None], spec)
    return alphas.gather(1, err.argmin(dim=1, keepdim=True)).squeeze(1)


@OBSERVERS.register("mse")
class MSEObserver(HistogramObserver):
    """The range with the least expected squared error (per tensor, or per channel / group)."""

    default_config = MSEConfig()

    def __init__(self, spec: QuantSpec, config: MSEConfig | None = None) -> None:
        super().__init__(spec, config)

    def _clip_range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hist
        assert h.counts is not None and h.lo is not None and h.hi is not None
        if spec.symmetric:
            amax = symmetric_amax(h)
            lo, hi = -amax, amax
        else:
            lo, hi = h.lo, h.hi
        centers = h.centers().float()  # [C, 2 * bins]
        alpha = best_alpha(centers, h.counts, lo, hi, spec, self.config.grid)  # [C]
        return alpha * lo, alpha * hi
