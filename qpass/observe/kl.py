"""KL: TensorRT's entropy calibration on a streaming histogram of |x|.

For each candidate threshold ``i`` (in bins of the |x| histogram, from ``start_bin`` up to
``bins``):

1. P = hist[:i], with the clipped mass sum(hist[i:]) folded into its last bin;
2. Q: hist[:i] quantized to L levels. Level l holds bins [l * m, (l + 1) * m) with
   m = i // L; the last level also takes the remainder (MXNet / TensorRT's merge). Each
   level's mass is spread evenly over the bins of the level where P is nonzero (bins where P
   is zero stay zero). As in MXNet's reference, Q's level masses come from hist[:i] WITHOUT
   the folded tail: quantizing the folded P instead makes Q == P at i == L (KL = 0) and
   always picks the smallest threshold;
3. smoothing: every zero bin of P and of Q gets ``eps`` (1e-4) counts, then both are
   normalized (MXNet's smoothing without its compensating subtraction, which can turn
   negative for int4's wide levels); KL(P || Q) = sum p log(p / q).

The threshold is the upper edge of bin i - 1 for the smallest KL (the smallest i on ties).
All candidates are evaluated at once, in closed form per level from prefix sums.

Levels L: the codes on one side of zero, ``fmt.qmax - mid + 1`` (int8 128, int4 8, uint8 and
uint4 symmetric 128 and 8). Asymmetric specs use the same L when the data has both signs, and
all ``qmax - qmin + 1`` codes when it is one-sided (ReLU outputs); the range is then the
observed (min, max) clipped to [-threshold, threshold]. fp8 has no uniform grid for the level
model: use ``"mse"`` or ``"percentile"`` for fp8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qpass.config import QuantSpec
from qpass.numerics import Format
from qpass.observe.histogram import HistogramObserver, check_bins, symmetric_amax
from qpass.observe.observer import OBSERVERS

EPS = 1e-4


@dataclass(frozen=True)
class KLConfig:
    bins: int = 2048  # |x| bins
    start_bin: int = 128  # the smallest candidate threshold, in bins (TensorRT: 128)

    def __post_init__(self) -> None:
        check_bins("KLConfig", self.bins)
        if not isinstance(self.start_bin, int) or not 1 <= self.start_bin <= self.bins:
            raise ValueError(f"KLConfig.start_bin={self.start_bin!r} is not valid; allowed: an "
                             f"integer from 1 to bins ({self.bins})")


def _xlogx(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > 0, t * torch.log(t.clamp(min=1e-300)), 0.0)


def kl_divergences(hist: torch.Tensor, levels: int, start: int) -> torch.Tensor:
    """KL(P_i || Q_i) for every candidate i in [max(start, levels), n]: [K] float64.

    hist: [n] counts of |x|. Closed form per level from prefix sums, O(K * levels): within
    level l, sum_j p_j log(p_j / q_j) = (S_l - A_l log(mass_l / nnz_l)) / Z_P + ..., with
    A_l = sum P, S_l = sum P log P over the level; zero bins of P (and Q) add the smoothing terms.
    """
    h = hist.double()
    n, lv = h.numel(), levels
    zero = torch.zeros(1, dtype=torch.float64)
    cs = torch.cat([zero, h.cumsum(0)])  # [n + 1]: cs[k] = sum(h[:k])
    csl = torch.cat([zero, _xlogx(h).cumsum(0)])
    cnz = torch.cat([zero, (h > 0).double().cumsum(0)])
    total = cs[-1]
    i = torch.arange(max(start, lv), n + 1)  # [K] candidates
    m = (i // lv)[:, None]  # [K, 1] bins per level
    lvl = torch.arange(lv)[None, :]  # [1, L]
    a = lvl * m  # [K, L] first bin of each level
    b = torch.where(lvl == lv - 1, i[:, None], a + m)  # [K, L] one past its last bin
    clip = total - cs[i]  # [K] mass beyond the threshold, folded into bin i - 1
    h_last = h[i - 1]
    p_last = h_last + clip
    mass = cs[b] - cs[a]  # [K, L] Q's level mass (from the unfolded histogram, as MXNet)
    a_p = mass.clone()
    a_p[:, -1] += clip  # [K, L] sum of P over each level
    s_p = csl[b] - csl[a]
    s_p[:, -1] += _xlogx(p_last) - _xlogx(h_last)  # [K, L] sum of P log P
    nnz = cnz[b] - cnz[a]
    nnz[:, -1] += ((p_last > 0) & (h_last == 0)).double()  # [K, L] nonzero bins of P
    lost = (mass[:, -1] == 0) & (clip > 0)  # [K] P > 0 but Q = 0 at bin i - 1
    z = i.double() - nnz.sum(dim=1)  # [K] zero bins of P (also zero in Q)
    z_p = total + EPS * z
    z_q = cs[i] + EPS * (z + lost.double())
    good = mass > 0
    q_log = torch.log(torch.where(good, mass, 1.0) / nnz.clamp(min=1))
    inner = torch.where(good, s_p - a_p * q_log, 0.0).sum(dim=1)  # [K]
    a_good = total - torch.where(lost, clip, 0.0)
    kl = (inner - a_good * torch.log(z_p) + a_good * torch.log(z_q)) / z_p
    kl = kl + z * (EPS / z_p) * torch.log(z_q / z_p)
    c = clip.clamp(min=1e-300)
    return kl + torch.where(lost, (c / z_p) * torch.log(c * z_q / (z_p * EPS)), 0.0)


def kl_threshold_bins(hist: torch.Tensor, levels: int, start: int) -> int:
    """The number of |x| bins (the threshold in bins) with the smallest KL."""
    n = hist.numel()
    if start > n or levels > n:
        return n
    div = kl_divergences(hist, levels, start)
    return max(start, levels) + int(torch.argmin(div))


def kl_levels(fmt: Format, symmetric: bool, one_sided: bool) -> int:
    if fmt.is_float:
        raise ValueError(
            f"the kl observer models a uniform integer grid and cannot serve {fmt.name}; use "
            "observer='mse' or 'percentile' for fp8 formats"
        )
    if symmetric:
        mid = 0 if fmt.signed else (int(fmt.qmax) + 1) // 2
        return int(fmt.qmax) - mid + 1
    codes = int(fmt.qmax - fmt.qmin) + 1
    return codes if one_sided else codes // 2


@OBSERVERS.register("kl")
class KLObserver(HistogramObserver):
    """TensorRT entropy calibration (per tensor; per channel loops over channels)."""

    default_config = KLConfig()

    def __init__(self, spec: QuantSpec, config: KLConfig | None = None) -> None:
        super().__init__(spec, config)
        kl_levels(spec.fmt, spec.symmetric, one_sided=False)  # fail early for fp8

    def _clip_range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hist
        assert h.lo is not None and h.hi is not None
        abs_counts = h.abs_counts()  # [C, bins]
        one_sided = (h.lo >= 0) | (h.hi <= 0)  # [C]
        t = torch.empty(abs_counts.shape[0], dtype=torch.float64)
        for c in range(abs_counts.shape[0]):
            levels = kl_levels(spec.fmt, spec.symmetric, bool(one_sided[c]))
            t[c] = kl_threshold_bins(abs_counts[c], levels, self.config.start_bin) * h.width[c]
        t = torch.minimum(t.float(), symmetric_amax(h))
        if spec.symmetric:
            return -t, t
        return torch.maximum(h.lo, -t), torch.minimum(h.hi, t)
