"""The SmoothQuant pass (Xiao et al., 2023): migrate activation outliers into the weights.

For each scale group (linears sharing one input, see ``groups``) the per-channel scale
``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` divides the activation and multiplies the
weights. Unlike the reference implementation, which smooths only norm -> linear groups, qpass
also folds into producing linears through per-channel-linear ops (v_proj -> attention ->
o_proj, up_proj -> act(gate) * up -> down_proj), where Llama-style models keep their worst
outliers. The statistics include the sink tokens even when static activations give them a
scale of their own (``QuantSpec.sink_tokens``): smoothing for the other tokens alone divides a
column the sink token carries at |x| ~ 3000 by ~0.01, which multiplies it there (to 222,700 on
SmolLM2's layer 28) and its weight's rounding error with it. ``alpha`` is one global value,
or ``None`` to search it per group on calibration data over ``grid``, minimizing the group's
output error after quantization (the unsmoothed group is a candidate too). The float function
is kept exactly (up to rounding); activation ranges are observed afterwards, on the smoothed
graph.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx as fx
from tqdm.auto import tqdm

from qpass.passes import PASSES, Pass, PassContext, PassResult
from qpass.quantizable import find_sites
from qpass.transform.groups import ScaleGroup, find_scale_groups
from qpass.transform.smoothing import (
    apply_scales,
    consumer_weights,
    group_error,
    smooth_scales,
)
from qpass.transform.stats import ChannelStats, collect_channel_stats

log = logging.getLogger(__name__)
DEFAULT_GRID = tuple(round(i * 0.05, 2) for i in range(21))


@PASSES.register("smoothquant")
@dataclass(frozen=True)
class SmoothQuant(Pass):
    """``alpha``: migration strength in [0, 1], or ``None`` to search ``grid`` per group.
    ``explicit_multiply``: where no exact fold exists, insert ``x * (1/s)`` before the group's
    linears (a real op at run time) instead of leaving the group unsmoothed.
    ``sample_rows``: calibration tokens kept per group for the search."""

    alpha: float | None = 0.5
    grid: tuple[float, ...] = DEFAULT_GRID
    explicit_multiply: bool = False
    sample_rows: int = 512

    stage: ClassVar[str] = "float"

    def __post_init__(self) -> None:
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"SmoothQuant.alpha={self.alpha!r} is not valid; allowed: a number "
                             "in [0, 1] (0.5 is the paper's default), or None to search per group")
        if not self.grid or not all(0.0 <= a <= 1.0 for a in self.grid):
            raise ValueError(f"SmoothQuant.grid={self.grid!r} is not valid; allowed: a non-empty "
                             "tuple of alphas in [0, 1]")
        if self.sample_rows < 1:
            raise ValueError(f"SmoothQuant.sample_rows={self.sample_rows!r} is not valid; "
                             "allowed: a positive number of calibration tokens, e.g. 512")

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        recipe = ctx.recipe
        all_sites = find_sites(gm)
        sites = [s for s in all_sites
                 if not any(fnmatch.fnmatchcase(s.fqn, p) for p in recipe.keep_float)]
        groups = find_scale_groups(gm, sites, all_sites)
        todo = [g for g in groups if g.fold is not None or self.explicit_multiply]
        rows = self.sample_rows if self.alpha is None else 0
        stats = collect_channel_stats(gm, [g.activation for g in todo], ctx.batches, rows,
                                      ctx.progress, "qpass smoothquant stats")
        report = [_skipped(g) for g in groups if g not in todo]
        for g in tqdm(todo, desc="qpass smoothquant", disable=not ctx.progress, unit="group"):
            report.append(self._smooth(gm, g, stats[g.activation.name], ctx))
        applied = [r for r in report if r["fold"] not in ("none", "unsmoothed")]
        log.info("qpass smoothquant: %d of %d groups smoothed", len(applied), len(groups))
        return PassResult(gm, bool(applied), {"alpha": self.alpha, "groups": report})

    def _smooth(self, gm: fx.GraphModule, g: ScaleGroup, st: ChannelStats,
                ctx: PassContext) -> dict[str, Any]:
        weights = consumer_weights(gm, g)
        wmax = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)
        cmap = getattr(g.fold, "channel_map", None)
        prec = ctx.recipe.precision
        if self.alpha is not None:
            alpha, errors = self.alpha, {}
        else:
            x, rw = st.sample, st.sample_weights
            errors = {a: group_error(x, st.lo, st.hi, weights,
                                     smooth_scales(st.absmax, wmax, a, cmap), prec, rw)
                      for a in self.grid}
            errors[None] = group_error(x, st.lo, st.hi, weights,
                                       torch.ones_like(wmax), prec, rw)
            alpha = min(errors, key=lambda a: errors[a])
        row = _skipped(g)
        row.update(alpha=alpha, error=errors.get(alpha), error_unsmoothed=errors.get(None),
                   act_absmax=float(st.absmax.max()))
        if alpha is None:
            row["fold"] = "unsmoothed"
            return row
        s = smooth_scales(st.absmax, wmax, alpha, cmap)
        row.update(fold=apply_scales(gm, g, s), s_min=float(s.min()), s_max=float(s.max()),
                   act_absmax_smoothed=float((st.absmax / s).max()))
        return row


def _skipped(g: ScaleGroup) -> dict[str, Any]:
    return {"activation": g.activation.name, "consumers": [s.fqn for s in g.consumers],
            "fold": "none", "producer": g.fold.fqn if g.fold else None, "reason": g.reason}
