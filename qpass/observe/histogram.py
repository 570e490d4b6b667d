"""A streaming histogram with bounded memory, and the base class of the histogram observers.

``StreamingHistogram`` keeps, for each of C rows (1 per tensor, or one per channel / group),
a two-sided histogram of ``2 * bins`` equal bins over ``[-R_c, R_c]``, with ``R_c = 2**e_c``
a power of two, plus the exact running min and max. Zero is always a bin edge, so the
histogram of ``|x|`` (``bins`` bins over ``[0, R_c]``) is an exact fold of the two-sided one.

Growth: when a batch holds ``|x| >= R_c``, ``R_c`` doubles (``s`` times at once) and every
``2**s`` adjacent bins of each side merge into one. Bin edges of the coarse grid are edges of
the fine grid, so growth moves counts without approximation and never restarts.

What is exact and what is approximate:

- counts: exact (float64 holds integers exactly up to 2**53); growth and ``merge`` are exact:
  every ``R_c`` is a power of two, so two histograms with the same ``bins`` are always aligned
  after growing the smaller to the larger range. ``merge`` equals observing the union, bin by bin.
- the order in which batches arrive matters only through resolution: a value observed while
  ``R_c`` was small lands in the same coarse bin once ``R_c`` grows as if it came later.
- approximate: positions inside a bin (the observers assume values spread evenly in a bin or
  sit at its center), and resolution: the data fill between half and all of the ``bins`` bins
  of ``|x|`` (``R_c`` is the next power of two above the max).

Memory: ``C * 2 * bins`` float64 counts plus three [C] vectors, whatever the number of batches.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from qpass.config import PerTensor, QuantSpec
from qpass.numerics import qparams_from_range
from qpass.observe.observer import Observer, shape_qparams

# exponent of an all-zero row's range: below every float32 (subnormals reach 2**-149)
EXP_MIN = -150
# the most counts one observer may hold (2**26 float64 = 512 MiB)
MAX_STATE = 2**26


def check_bins(owner: str, bins: int) -> None:
    """``bins`` must be a power of two in [16, 65536]: growth merges 2**s bins into one."""
    if not isinstance(bins, int) or bins < 16 or bins > 65536 or bins & (bins - 1):
        raise ValueError(
            f"{owner}.bins={bins!r} is not valid; allowed: a power of two from 16 to 65536 "
            "(e.g. 2048)"
        )


def _exponent(amax: torch.Tensor) -> torch.Tensor:
    """The smallest e with amax < 2**e, per row; EXP_MIN for an all-zero row."""
    _, e = torch.frexp(amax.double())  # amax = m * 2**e, m in [0.5, 1)
    return torch.where(amax > 0, e.long(), torch.full_like(e.long(), EXP_MIN))


class StreamingHistogram:
    """Histograms of C rows: ``counts`` [C, 2 * bins] over [-R_c, R_c], R_c = 2**exp[c]."""

    def __init__(self, bins: int = 2048) -> None:
        check_bins("StreamingHistogram", bins)
        self.bins = bins  # per side
        self.counts: torch.Tensor | None = None  # [C, 2 * bins] float64
        self.exp: torch.Tensor | None = None  # [C] int64
        self.lo: torch.Tensor | None = None  # [C] float32, exact running min
        self.hi: torch.Tensor | None = None  # [C] float32, exact running max

    @property
    def empty(self) -> bool:
        return self.counts is None

    @property
    def radius(self) -> torch.Tensor:
        """R_c [C] float64."""
        assert self.exp is not None
        return torch.pow(2.0, self.exp.double())

    @property
    def width(self) -> torch.Tensor:
        """Bin width R_c / bins [C] float64."""
        return self.radius / self.bins

    def abs_counts(self) -> torch.Tensor:
        """The histogram of |x|: [C, bins] over [0, R_c], bin k = [k w, (k + 1) w)."""
        assert self.counts is not None
        n = self.bins
        return self.counts[:, n:] + self.counts[:, :n].flip(1)

    def centers(self) -> torch.Tensor:
        """Centers of the two-sided bins [C, 2 * bins] float64."""
        j = torch.arange(2 * self.bins, dtype=torch.float64)
        return -self.radius[:, None] + (j + 0.5) * self.width[:, None]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything the histogram holds (for size checks and serialization)."""
        names = ("counts", "exp", "lo", "hi")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def update(self, x: torch.Tensor) -> None:
        """Fold ``x`` [C, M] (row c feeds histogram c) into the counts."""
        if x.numel() == 0:
            return
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(
                f"{bad} NaN/Inf value(s) of {x.numel()} in a tensor of shape {tuple(x.shape)}; "
                "a histogram needs finite data: check the calibration batch"
            )
        x = x.float()
        lo, hi = x.amin(dim=1), x.amax(dim=1)  # [C]
        need = _exponent(torch.maximum(-lo, hi))
        if self.counts is None:
            c = x.shape[0]
            if c * 2 * self.bins > MAX_STATE:
                raise ValueError(
                    f"a histogram of {c} rows x {2 * self.bins} bins exceeds {MAX_STATE} counts; "
                    "use fewer bins, a coarser granularity, or the minmax observer"
                )
            self.counts = torch.zeros(c, 2 * self.bins, dtype=torch.float64)
            self.exp, self.lo, self.hi = need, lo, hi
        else:
            if x.shape[0] != self.counts.shape[0]:
                raise ValueError(f"histogram tracks {self.counts.shape[0]} rows but got a tensor "
                                 f"with {x.shape[0]}: every batch must keep the channel count")
            self.grow(torch.maximum(self.exp, need))
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        self.counts += self._bincount(x)

    def _bincount(self, x: torch.Tensor) -> torch.Tensor:
        n, c = self.bins, x.shape[0]
        w = self.width.to(torch.float64)[:, None]  # [C, 1]
        k = torch.floor(x.abs().double() / w).clamp_(max=n - 1).long()  # [C, M] |x| bin
        idx = torch.where(x >= 0, n + k, n - 1 - k)  # [C, M] two-sided bin
        idx += torch.arange(c)[:, None] * (2 * n)
        return torch.bincount(idx.flatten(), minlength=c * 2 * n).view(c, 2 * n).double()

    def grow(self, new_exp: torch.Tensor) -> None:
        """Widen row c to [-2**new_exp[c], 2**new_exp[c]], merging 2**s adjacent bins."""
        assert self.counts is not None and self.exp is not None
        shift = (new_exp - self.exp).clamp(0, 62)  # [C]
        if not bool((shift > 0).any()):
            return
        n = self.bins
        k = torch.arange(n)
        k_new = k[None, :] >> shift[:, None]  # [C, bins]: |x| bin k -> k >> s
        idx = torch.cat([n - 1 - k_new.flip(1), n + k_new], dim=1)  # [C, 2 * bins]
        self.counts = torch.zeros_like(self.counts).scatter_add_(1, idx, self.counts)
        self.exp = torch.maximum(self.exp, new_exp)

    def merge(self, other: StreamingHistogram) -> None:
        """Fold ``other`` in: exactly the counts of observing both streams."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge a histogram of {other.bins} bins into one of "
                             f"{self.bins}; observers must share the bins setting")
        if other.counts is None:
            return
        if self.counts is None:
            for k, t in other.state_tensors().items():
                setattr(self, k, t.clone())
            return
        if other.counts.shape != self.counts.shape:
            raise ValueError(f"cannot merge histograms of {other.counts.shape[0]} and "
                             f"{self.counts.shape[0]} rows")
        theirs = StreamingHistogram(self.bins)
        for k, t in other.state_tensors().items():
            setattr(theirs, k, t.clone())
        target = torch.maximum(self.exp, other.exp)
        self.grow(target)
        theirs.grow(target)
        self.counts += theirs.counts
        self.lo, self.hi = torch.minimum(self.lo, other.lo), torch.maximum(self.hi, other.hi)


class HistogramObserver(Observer):
    """Base of the observers that choose a clip range from a ``StreamingHistogram``.

    Subclasses set ``default_config`` (a frozen dataclass with a ``bins`` field) and implement
    ``_clip_range(spec) -> (lo [C], hi [C])``; this class handles the configuration, the
    granularity (one histogram row per tensor, channel or group), merging and qparams.
    """

    default_config: Any = None

    def __init__(self, spec: QuantSpec, config: Any = None) -> None:
        super().__init__(spec)
        self.config = config or type(self).default_config
        bins = self.config.bins if self.config is not None else 2048
        check_bins(type(self).__name__, bins)
        self.hist = StreamingHistogram(bins)
        self.shape: torch.Size | None = None

    def update(self, x: torch.Tensor) -> None:
        view, axis = self.view(x.detach())
        if axis is None:
            rows = view.reshape(1, -1)  # [1, numel]
        else:
            rows = view.movedim(axis, 0).reshape(view.shape[axis], -1)  # [C, M]
        try:
            self.hist.update(rows)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None
        if self.shape is None:
            self.shape = x.shape
        self.count += 1

    def merge(self, other: Observer) -> Observer:
        self._check_merge(other)
        assert isinstance(other, HistogramObserver)
        self.hist.merge(other.hist)
        self.count += other.count
        self.shape = self.shape if self.shape is not None else other.shape
        return self

    def clip_range(self, spec: QuantSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen (lo, hi), each [C] float32 (C = 1 per tensor), before widening to 0."""
        if self.hist.empty:
            raise RuntimeError(
                f"{type(self).__name__} saw no data: calibrate first (run qpass.calibrate with "
                "at least one batch that reaches this layer) before asking for qparams"
            )
        lo, hi = self._clip_range(spec or self.spec)
        assert self.hist.lo is not None and self.hist.hi is not None
        # never wider than the data, never past 0 (qparams_from_range widens to 0 anyway)
        return lo.float().clamp(self.hist.lo, self.hist.hi), hi.float().clamp(
            self.hist.lo, self.hist.hi)

    @abstractmethod
    def _clip_range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo [C], hi [C]) chosen from ``self.hist`` for ``spec``."""

    def qparams(self, spec: QuantSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        spec = spec or self.spec
        lo, hi = self.clip_range(spec)
        scale, zp = qparams_from_range(lo, hi, spec.fmt, spec.symmetric)
        if isinstance(self.spec.granularity, PerTensor):
            return scale.reshape(()), zp.reshape(())
        assert self.shape is not None
        return shape_qparams(scale, self.shape, spec), shape_qparams(zp, self.shape, spec)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.hist.state_tensors()


def symmetric_amax(hist: StreamingHistogram) -> torch.Tensor:
    """max |x| per row [C] float32."""
    assert hist.lo is not None and hist.hi is not None
    return torch.maximum(-hist.lo, hist.hi)
