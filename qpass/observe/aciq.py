"""ACIQ: the analytic clipping range of Banner et al. (2019), "Post training 4-bit
quantization of convolutional networks for rapid-deployment".

Fit a Gaussian N(mu, sigma^2) or a Laplace(mu, b) to the observed values and clip at the
``alpha`` that minimizes the expected quantization MSE on a uniform grid of 2^M levels:

    Laplace:  E[(X - Q(X))^2] ~ 2 b^2 exp(-alpha / b) + alpha^2 / (3 * 4^M)
    Gaussian: E[(X - Q(X))^2] ~ (alpha^2 + sigma^2) (1 - erf(alpha / (sqrt(2) sigma)))
                                - sqrt(2 / pi) alpha sigma exp(-alpha^2 / (2 sigma^2))
                                + alpha^2 / (3 * 4^M)

The multipliers below are the numeric minimizers of these expressions (tests/observe/
test_aciq.py re-derives them with scipy); the paper's rounded table (2.83b ... 9.89b,
1.71sigma ... 3.92sigma) agrees within 0.4%. Signed symmetric formats have 2^M - 1 levels
(int8: -127..127); the formula's 2^M is kept, a difference well inside the fit's error.

Statistics are streamed and merge exactly (up to float64 rounding): the element count, the
mean and the central moment sums M2, M3, M4 (Chan et al. / Pebay parallel update), plus the
observed min and max. The scale parameter is fitted by moments: sigma = sqrt(M2 / n) and, for
Laplace, b = sigma / sqrt(2) (Var = 2 b^2). The maximum-likelihood b = E|x - mu| is not
mergeable in one pass (mu moves as data arrives), so it is not used.

``distribution="auto"`` picks per tensor (or per channel) by the excess kurtosis
n M4 / M2^2 - 3, which is 0 for a Gaussian and 3 for a Laplace: Laplace above
``kurtosis_threshold`` (default 1.5, midway), Gaussian otherwise.

Clip ranges: symmetric ``[-c, c]`` with ``c = min(|mu| + alpha s, max(|min|, |max|))``;
asymmetric ``[max(mu - alpha s, min), min(mu + alpha s, max)]``. Clipping beyond what was
observed only wastes levels, hence the caps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qpass.config import QuantSpec
from qpass.numerics import qparams_from_range, reduce_range
from qpass.observe.checks import check_finite, no_data_error
from qpass.observe.observer import OBSERVERS, Observer, shape_qparams

# bits M -> alpha / scale parameter (b for Laplace, sigma for Gaussian)
ALPHA_LAPLACE: dict[int, float] = {2: 2.831, 3: 3.897, 4: 5.029, 5: 6.205, 6: 7.413,
                                   7: 8.646, 8: 9.897}
ALPHA_GAUSSIAN: dict[int, float] = {2: 1.711, 3: 2.152, 4: 2.559, 5: 2.936, 6: 3.287,
                                    7: 3.615, 8: 3.924}
DISTRIBUTIONS = ("gaussian", "laplace", "auto")


@dataclass(frozen=True)
class ACIQConfig:
    """``distribution``: the fitted prior; ``kurtosis_threshold``: the "auto" switch point."""

    distribution: str = "laplace"
    kurtosis_threshold: float = 1.5

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"ACIQConfig.distribution={self.distribution!r} is not valid; allowed: "
                f"{', '.join(DISTRIBUTIONS)}"
            )
        t = self.kurtosis_threshold
        if not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ValueError(f"ACIQConfig.kurtosis_threshold={t!r} is not valid; allowed: a "
                             "finite number (excess kurtosis: Gaussian 0, Laplace 3)")


def aciq_alpha(bits: int, distribution: str) -> float:
    """The optimal clip in units of the scale parameter (b or sigma) for ``bits``."""
    table = ALPHA_LAPLACE if distribution == "laplace" else ALPHA_GAUSSIAN
    if bits not in table:
        raise ValueError(f"ACIQ has clip multipliers for {min(table)}..{max(table)} bits, "
                         f"not {bits}; use an integer format such as int8 or int4")
    return table[bits]


def _check_spec(spec: QuantSpec) -> None:
    if spec.fmt.is_float:
        raise ValueError(
            f"ACIQ assumes a uniform integer grid and cannot clip for {spec.format}; use "
            "observer='minmax' for float formats"
        )
    aciq_alpha(spec.fmt.bits, "gaussian")


Moments = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # mean, M2, M3, M4


def batch_moments(rows: torch.Tensor) -> Moments:
    """Mean and central moment sums of each row. rows: [C, n] float64."""
    mean = rows.mean(dim=1)
    d = rows - mean[:, None]
    d2 = d * d
    return mean, d2.sum(dim=1), (d2 * d).sum(dim=1), (d2 * d2).sum(dim=1)


def combine_moments(na: int, a: Moments, nb: int, b: Moments) -> Moments:
    """Moments of the union of two samples of sizes na and nb (Pebay 2008, eq. 3.1)."""
    n = na + nb
    mean_a, m2a, m3a, m4a = a
    mean_b, m2b, m3b, m4b = b
    delta = mean_b - mean_a
    mean = mean_a + delta * (nb / n)
    m2 = m2a + m2b + delta**2 * (na * nb / n)
    m3 = (m3a + m3b + delta**3 * (na * nb * (na - nb) / n**2)
          + 3.0 * delta * (na * m2b - nb * m2a) / n)
    m4 = (m4a + m4b + delta**4 * (na * nb * (na * na - na * nb + nb * nb) / n**3)
          + 6.0 * delta**2 * (na * na * m2b + nb * nb * m2a) / n**2
          + 4.0 * delta * (na * m3b - nb * m3a) / n)
    return mean, m2, m3, m4


@OBSERVERS.register("aciq")
class ACIQObserver(Observer):
    def __init__(self, spec: QuantSpec, config: ACIQConfig | None = None) -> None:
        super().__init__(spec)
        _check_spec(spec)
        self.config = config or ACIQConfig()
        self.n = 0  # elements seen per channel (per tensor: in total)
        self.mean: torch.Tensor | None = None  # float64, shaped like lo
        self.m2: torch.Tensor | None = None
        self.m3: torch.Tensor | None = None
        self.m4: torch.Tensor | None = None
        self.lo: torch.Tensor | None = None  # float32 [C], or 0-d per tensor
        self.hi: torch.Tensor | None = None
        self.shape: torch.Size | None = None

    def moments(self) -> Moments | None:
        if self.mean is None or self.m2 is None or self.m3 is None or self.m4 is None:
            return None
        return self.mean, self.m2, self.m3, self.m4

    def update(self, x: torch.Tensor) -> None:
        x = x.detach()
        check_finite(self, x)
        view, axis = self.view(x)
        lo, hi = reduce_range(view.float(), axis)
        rows = view.reshape(1, -1) if axis is None else view.movedim(axis, 0).flatten(1)
        if self.lo is not None and lo.shape != self.lo.shape:
            raise ValueError(f"{type(self).__name__} tracks {tuple(self.lo.shape)} statistics "
                             f"but got a tensor of shape {tuple(x.shape)} that gives "
                             f"{tuple(lo.shape)}")
        mean, m2, m3, m4 = batch_moments(rows.double())
        shape = lo.shape
        self._fold(rows.shape[1], (mean.reshape(shape), m2.reshape(shape), m3.reshape(shape),
                                   m4.reshape(shape)), lo, hi)
        self.shape = x.shape
        self.count += 1

    def _fold(self, n: int, moments: Moments, lo: torch.Tensor, hi: torch.Tensor) -> None:
        ours = self.moments()
        if ours is None or self.lo is None or self.hi is None:
            self.mean, self.m2, self.m3, self.m4 = (m.clone() for m in moments)
            self.lo, self.hi = lo.clone(), hi.clone()
        else:
            self.mean, self.m2, self.m3, self.m4 = combine_moments(self.n, ours, n, moments)
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        self.n += n

    def merge(self, other: Observer) -> Observer:
        """Exact (Chan/Pebay): as if one observer had seen both streams."""
        self._check_merge(other)
        assert isinstance(other, ACIQObserver)
        theirs = other.moments()
        if theirs is None or other.lo is None or other.hi is None:
            return self
        self._fold(other.n, theirs, other.lo, other.hi)
        self.shape = self.shape or other.shape
        self.count += other.count
        return self

    def is_laplace(self) -> torch.Tensor:
        """Per channel (or 0-d): whether the Laplace fit is used."""
        m = self.moments()
        if m is None:
            raise no_data_error(self)
        dist = self.config.distribution
        if dist != "auto":
            return torch.full_like(m[0], dist == "laplace", dtype=torch.bool)
        _, m2, _, m4 = m
        excess = self.n * m4 / m2.clamp(min=torch.finfo(torch.float64).tiny) ** 2 - 3.0
        return (excess > self.config.kurtosis_threshold) & (m2 > 0)

    def clip_range(self, spec: QuantSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ACIQ clipping range [lo, hi] (float32, per channel or 0-d)."""
        spec = spec or self.spec
        _check_spec(spec)
        m = self.moments()
        if m is None or self.lo is None or self.hi is None:
            raise no_data_error(self)
        mean, m2 = m[0], m[1]
        sigma = (m2 / self.n).sqrt()
        laplace = self.is_laplace()
        bits = spec.fmt.bits
        # Laplace b = sigma / sqrt(2): the reach alpha_L * b in units of sigma
        reach = torch.where(laplace, aciq_alpha(bits, "laplace") / math.sqrt(2.0),
                            aciq_alpha(bits, "gaussian")) * sigma
        lo, hi = self.lo.double(), self.hi.double()
        if spec.symmetric:
            clip = torch.minimum(mean.abs() + reach, torch.maximum(-lo, hi))
            return (-clip).float(), clip.float()
        return torch.maximum(mean - reach, lo).float(), torch.minimum(mean + reach, hi).float()

    def qparams(self, spec: QuantSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        spec = spec or self.spec
        lo, hi = self.clip_range(spec)
        assert self.shape is not None
        scale, zp = qparams_from_range(lo, hi, spec.fmt, spec.symmetric)
        return shape_qparams(scale, self.shape, spec), shape_qparams(zp, self.shape, spec)
