"""The arithmetic of AWQ (Lin et al., 2024): activation-aware scales and weight clipping.

For a group of linears reading X [tokens, C] with weights W_i [N_i, C], a per-channel scale
s keeps the float function, X W_iᵀ = (X/s)(W_i s)ᵀ, but changes what rounding loses:
channels with large activations get larger weights and so a finer relative grid. The search
tries, for each ratio r of a grid, ::

    s = mean|X|^r / (mean_w^(1-r) + 1e-4),  normalized by sqrt(max(s) min(s))

(``mean_w``: each weight's magnitude relative to its quantization group, averaged over
rows; AutoAWQ's "duo scaling") and keeps the s with the least quantized output error
Σ_i ||X (Q(W_i s)/s - W_i)ᵀ||². The error is computed exactly over every calibration token
through the Gram matrix H = XᵀX: ||X Dᵀ||² = tr(D H Dᵀ). No scaling (s = 1) is a candidate
too, so the search never does worse than round-to-nearest on the calibration data.

Clipping then shrinks each quantization group's range [lo, hi] to [r lo, r hi], r chosen per
(row, group) to minimize that group's output error d H_gg dᵀ on the scaled input; optionally
each bound is then searched on its own.
"""

from __future__ import annotations

import torch

from qpass.config import PerChannel, PerGroup, PerTensor, QuantSpec
from qpass.convert.weights import quantize_weight

RowGrams = list[tuple[torch.Tensor, torch.Tensor]]  # (rows, Gram [C, C]) covering every row

EPS = 1e-4  # AutoAWQ's floor for the weight statistic and the scales


def group_ranges(k: int, spec: QuantSpec) -> list[tuple[int, int]]:
    """Column ranges of the quantization groups of a [N, k] weight (one range per channel
    or tensor spec; the last group shorter when the group size does not divide k)."""
    g = spec.granularity
    size = g.size if isinstance(g, PerGroup) else k
    return [(j, min(j + size, k)) for j in range(0, k, size)]


def relative_weight_magnitude(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """|w| [N, C] divided by the absmax of its quantization group."""
    a = w.abs()
    if isinstance(spec.granularity, PerTensor):
        return a / a.max().clamp(min=1e-12)
    out = torch.empty_like(a)
    for j0, j1 in group_ranges(w.shape[1], spec):
        part = a[:, j0:j1]
        out[:, j0:j1] = part / part.amax(1, keepdim=True).clamp(min=1e-12)
    return out


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor, ratio: float,
                     duo: bool = True) -> torch.Tensor:
    """s [C] for one ratio."""
    s = x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + EPS) if duo else x_mean.pow(ratio)
    s = s.clamp(min=EPS)
    return s / (s.max() * s.min()).sqrt()


def fake_quant(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Round-to-nearest of ``w`` [N, C] under ``spec``, dequantized, [N, C] float32."""
    return quantize_weight(w, spec).dequantize().T


def output_error(weights: list[torch.Tensor], specs: list[QuantSpec],
                 grams: list[RowGrams], s: torch.Tensor,
                 scaled: list[torch.Tensor] | None = None) -> float:
    """Σ_i tr(D_i H D_iᵀ) with D_i = Q(W_i s)/s - W_i: the group's quantized output error
    summed over the calibration tokens (H = XᵀX [C, C], or per set of rows of each consumer
    the Gram its output is read with, see ``site_hessians``); ``scaled``: W_i s, clipped."""
    total = 0.0
    for i, (w, spec, parts) in enumerate(zip(weights, specs, grams, strict=True)):
        d = fake_quant(w * s if scaled is None else scaled[i], spec) / s - w  # [N, C]
        for rows, h in parts:
            total += float(((d[rows] @ h) * d[rows]).sum())
    return total


def clip_ratios(w: torch.Tensor, spec: QuantSpec, h: torch.Tensor, max_shrink: float,
                steps: int, separate: bool = False) -> torch.Tensor:
    """Best shrink ratios [N, G, 2] (of the lower and the upper bound) per (row, group) of
    ``w`` [N, C] for input Gram ``h``. Both bounds shrink together; with ``separate`` (an
    asymmetric spec) each is then searched again with the other held, which moves the zero
    point as well as the range."""
    ranges = group_ranges(w.shape[1], spec)
    lo, hi = _group_bounds(w, ranges, spec)
    best_err = torch.full((w.shape[0], len(ranges)), float("inf"))
    best = torch.ones(w.shape[0], len(ranges), 2)
    grid = [1.0 - i / steps for i in range(int(max_shrink * steps) + 1)]

    def consider(cand: torch.Tensor) -> None:
        nonlocal best_err, best
        d = fake_quant(clip(w, ranges, lo * cand[..., 0], hi * cand[..., 1]), spec) - w
        err = torch.stack([((d[:, a:b] @ h[a:b, a:b]) * d[:, a:b]).sum(1) for a, b in ranges],
                          1)  # [N, G]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], cand, best)

    for r in grid:
        consider(torch.full_like(best, r))
    if separate and not spec.symmetric:
        for side in (1, 0):  # the upper bound, then the lower one, the other held
            held = best.clone()
            for r in grid:
                cand = held.clone()
                cand[..., side] = r
                consider(cand)
    return best


def clip_rows(w: torch.Tensor, spec: QuantSpec, parts: RowGrams, max_shrink: float,
              steps: int, separate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` [N, C] clipped group by group, each set of rows searched on its own Gram
    (``clip_ratios``), and the ratios [N, G, 2] it was clipped with."""
    ratios = torch.empty(w.shape[0], len(group_ranges(w.shape[1], spec)), 2)
    for rows, h in parts:
        ratios[rows] = clip_ratios(w[rows], spec, h, max_shrink, steps, separate)
    return apply_clip(w, spec, ratios), ratios


def apply_clip(w: torch.Tensor, spec: QuantSpec, ratios: torch.Tensor) -> torch.Tensor:
    """``w`` [N, C] clamped to its groups' bounds shrunk by ``ratios`` [N, G, 2]."""
    ranges = group_ranges(w.shape[1], spec)
    lo, hi = _group_bounds(w, ranges, spec)
    return clip(w, ranges, lo * ratios[..., 0], hi * ratios[..., 1])


def _group_bounds(w: torch.Tensor, ranges: list[tuple[int, int]], spec: QuantSpec):
    """[N, G] lower and upper bounds of each group (symmetric specs: ±absmax)."""
    lo = torch.stack([w[:, a:b].amin(1) for a, b in ranges], 1)
    hi = torch.stack([w[:, a:b].amax(1) for a, b in ranges], 1)
    if spec.symmetric:
        hi = torch.maximum(-lo, hi)
        lo = -hi
    return lo, hi


def clip(w: torch.Tensor, ranges: list[tuple[int, int]], lo: torch.Tensor,
         hi: torch.Tensor) -> torch.Tensor:
    out = w.clone()
    for j, (a, b) in enumerate(ranges):
        out[:, a:b] = torch.maximum(torch.minimum(w[:, a:b], hi[:, j:j + 1]), lo[:, j:j + 1])
    return out


def can_clip(spec: QuantSpec) -> bool:
    return isinstance(spec.granularity, PerGroup | PerChannel) and not spec.fmt.is_float
