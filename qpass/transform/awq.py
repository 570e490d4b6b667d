"""The AWQ pass (Lin et al., 2024): activation-aware per-channel weight scaling for low-bit
weight-only quantization, with optional weight clipping.

Groups are the SmoothQuant pass's (``groups``): linears sharing one input, whose scale folds
exactly into a norm's weight or into a producing linear (v_proj -> o_proj, up_proj ->
down_proj, GQA-aware). Groups without an exact fold are left alone. The pass walks the graph
layer by layer with every calibration batch (``layerwise``); at a group it accumulates mean|X|
and the Gram matrix XᵀX of its input, searches the scale (``awq_search``) on the error of the
block the group feeds (``block_output``: q/k/v through attention to o_proj's output, gate/up
through the MLP to down_proj's), or of its own output, folds it (float function kept up to
rounding), and optionally clips each consumer's weight groups. Later
groups see the scaled and clipped model. Convert then rounds the scaled weights to nearest,
or GPTQ (placed after AWQ in the recipe) solves them.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx as fx

from qpass.passes import PASSES, Pass, PassContext, PassResult
from qpass.quantizable import Site, canonical_weight, fetch_attr, find_sites
from qpass.transform import awq_search as search
from qpass.transform.block_output import block_output
from qpass.transform.gptq_solver import row_parts
from qpass.transform.groups import LinearFold, ScaleGroup, find_scale_groups
from qpass.transform.layerwise import LayerwiseWalk
from qpass.transform.site_hessians import SiteHessians
from qpass.transform.smoothing import apply_scales

log = logging.getLogger(__name__)


@PASSES.register("awq")
@dataclass(frozen=True)
class AWQ(Pass):
    """``grid``: ratios tried for the scale exponent (0, 1/grid, ..., (grid-1)/grid).
    ``duo_scaling``: divide by the relative weight magnitude too (AutoAWQ's default).
    ``clip``: search a shrink ratio per weight group, down to ``1 - max_shrink``, in
    ``clip_grid`` steps; ``clip_separate`` (asymmetric weights): then search the lower and
    the upper bound each on its own, the other held, which moves the zero point too. On
    SmolLM2 (4-bit g128) PPL 27.15 with one ratio in 20 steps, 26.84 separate in 20 steps,
    26.79 separate in 40 (the default; 80 steps: 26.81). ``clip_select``: re-measure the
    scale search's best ``clip_select`` ratios with their weights clipped (a cheaper one-ratio
    clip in ``clip_grid / 2`` steps) and keep the best; 1 keeps the scale search's choice. On
    SmolLM2 (4-bit g128) PPL 26.63 with 3 (the default), 26.79 with 1.
    ``skip``: module-FQN globs AWQ leaves alone.
    ``attention_values`` / ``residual_weighted``: measure the output error of value
    projections through their attention, and of residual writers relative to the residual
    stream, as GPTQ does (``site_hessians``). Off by default: on SmolLM2 (4-bit g128, scales
    searched on each linear's own output) AWQ measured PPL 27.92 with them against 27.59
    without, while GPTQ needs them.
    ``inspect``: measure each scale candidate on the output of the block the group feeds,
    recomputed by the model with the candidate's quantized weights (AutoAWQ's
    ``module2inspect``; ``block_output``), where one exists; else on the group's own output
    through its Gram matrix. On SmolLM2 (4-bit g128) PPL 27.15 with it, 27.60 without."""

    grid: int = 20
    duo_scaling: bool = True
    clip: bool = True
    max_shrink: float = 0.5
    clip_grid: int = 40
    clip_separate: bool = True
    clip_select: int = 3
    skip: tuple[str, ...] = ()
    attention_values: bool = False
    residual_weighted: bool = False
    inspect: bool = True

    stage: ClassVar[str] = "weights"

    def __post_init__(self) -> None:
        for name in ("grid", "clip_grid", "clip_select"):
            if getattr(self, name) < 1:
                raise ValueError(f"AWQ.{name}={getattr(self, name)!r} is not valid; allowed: a "
                                 "positive number of steps, e.g. 20")
        if not 0.0 <= self.max_shrink < 1.0:
            raise ValueError(f"AWQ.max_shrink={self.max_shrink!r} is not valid; allowed: a "
                             "number in [0, 1) (0.5 lets a group's range shrink to half)")
        if isinstance(self.skip, str):
            raise ValueError(f"AWQ.skip={self.skip!r} is not valid; allowed: a tuple of globs")

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        assert ctx.precisions is not None
        all_sites = find_sites(gm)
        sites = [s for s in all_sites if self._wants(s, ctx)]
        groups = find_scale_groups(gm, sites, all_sites)
        todo = [g for g in groups if g.fold is not None]
        report: dict[str, Any] = {"groups": [_row(g) for g in groups if g.fold is None]}
        if not todo:
            return PassResult(gm, False, report)
        start = time.perf_counter()
        walk = LayerwiseWalk(gm, ctx.batches)
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        first = {min((s.node for s in g.consumers), key=order.__getitem__): g for g in todo}
        worker = _Searcher(self, gm, ctx, walk, sites, report)
        walk.run(first, lambda node: worker.group(first[node]), ctx.progress, "qpass awq")
        report["seconds"] = time.perf_counter() - start
        log.info("qpass awq: %d of %d groups scaled in %.1f s", len(todo), len(groups),
                 report["seconds"])
        return PassResult(gm, True, report)

    def _wants(self, site: Site, ctx: PassContext) -> bool:
        prec = ctx.precisions.get(site.node.name)
        if prec is None or prec.weight is None or prec.weight.fmt.is_float:
            return False
        if prec.outlier_threshold is not None or prec.activation is not None:
            return False  # AWQ is for weight-only formats; SmoothQuant handles activations
        return not any(fnmatch.fnmatchcase(site.fqn, p) for p in self.skip)


class _Searcher:
    def __init__(self, cfg: AWQ, gm: fx.GraphModule, ctx: PassContext, walk: LayerwiseWalk,
                 sites: list[Site], report: dict[str, Any]) -> None:
        self.cfg, self.gm, self.ctx, self.walk, self.report = cfg, gm, ctx, walk, report
        self.special = SiteHessians(walk, sites, attention_values=cfg.attention_values,
                                    residual_weighted=cfg.residual_weighted, owner="awq")
        self.sites = sites

    def group(self, g: ScaleGroup) -> None:
        start = time.perf_counter()
        xs = self.walk.values(g.activation)
        c = g.channels
        h = torch.zeros(c, c, dtype=torch.float64)
        x_sum, tokens = torch.zeros(c, dtype=torch.float64), 0
        for x in xs:
            x2 = x.detach().reshape(-1, c).double()  # [tokens, C]
            h.addmm_(x2.T, x2)
            x_sum += x2.abs().sum(0)
            tokens += x2.shape[0]
        h32 = (h / tokens).float()
        specs = [self.ctx.precisions[s.node.name].weight for s in g.consumers]
        weights = [canonical_weight(fetch_attr(self.gm, str(s.weight_node.target)), s.op)
                   .detach().float() for s in g.consumers]  # [N_i, C]
        grams, kinds = self._grams(g, weights, h32)
        w_mean = torch.cat([search.relative_weight_magnitude(w, sp)
                            for w, sp in zip(weights, specs, strict=True)]).mean(0)
        error, out = self._error(g, weights, specs, grams)
        x_mean = (x_sum / tokens).float()
        s, ratio, errs = self._search(x_mean, w_mean, weights, error, g)
        reselect = None
        if self.cfg.clip and self.cfg.clip_select > 1:
            s, ratio, reselect = self._reselect(g, weights, specs, grams, error, errs, x_mean,
                                                w_mean)
        row = _row(g)
        if reselect is not None:
            row["reselect"] = reselect
        row.update(gram=kinds, inspected=out.name if out is not None else None, ratio=ratio,
                   error=errs[ratio], error_unscaled=errs[None], s_min=float(s.min()),
                   s_max=float(s.max()))
        if ratio is not None:
            row["fold"] = apply_scales(self.gm, g, s.double())
            self.walk.replace(g.activation, [x / s.to(x.dtype) for x in xs])
        if self.cfg.clip:
            ss = torch.outer(s, s)
            row["clip"] = self._clip(g, specs, [[(r, h / ss) for r, h in parts]
                                                for parts in grams])
        row["seconds"] = time.perf_counter() - start
        self.report["groups"].append(row)

    def _grams(self, g: ScaleGroup, weights: list[torch.Tensor], h32: torch.Tensor):
        """Per consumer, (rows, Gram) pairs covering its rows: the plain XᵀX/n, or for value
        projections and residual writers the weighted ones of ``site_hessians``."""
        grams, kinds = [], {}
        for site, w in zip(g.consumers, weights, strict=True):
            special, kind = self.special.row_hessians(site, w.shape[0])
            grams.append(row_parts(w.shape[0], h32, [(rows, (h / 2).float())  # H = 2XᵀX/n
                                                     for rows, h in special]))
            kinds[site.fqn or site.node.name] = kind
        return grams, kinds

    def _error(self, g: ScaleGroup, weights, specs, grams):
        """The search's error function of s, and the node it is measured on (``None``: the
        consumers' own outputs, through their Grams)."""
        out = block_output(g.consumers, self.sites) if self.cfg.inspect else None
        if out is not None:
            try:
                return self._block_error(g, weights, specs, out), out
            except ValueError as exc:  # a value the look-ahead needs was already freed
                log.warning("qpass awq: %s searched on its own output: %s", g.activation.name,
                            exc)
        return (lambda s, scaled=None: search.output_error(weights, specs, grams, s, scaled)), None

    def _block_error(self, g: ScaleGroup, weights, specs, out: fx.Node):
        """s -> the squared error of ``out`` over every calibration token, computed ahead by
        the model with each consumer's weight W replaced by Q(W s)/s (``block_output``; W s
        given as ``scaled`` when it was clipped)."""
        params = [fetch_attr(self.gm, str(c.weight_node.target)) for c in g.consumers]
        saved = [p.detach().clone() for p in params]
        ref = self.walk.peek(out)

        def error(s: torch.Tensor, scaled: list[torch.Tensor] | None = None) -> float:
            try:
                for i, (p, c, w, spec) in enumerate(zip(params, g.consumers, weights, specs,
                                                        strict=True)):
                    ws = w * s if scaled is None else scaled[i]
                    wq = (search.fake_quant(ws, spec) / s).to(p.dtype)
                    p.copy_(wq if c.op.weight_layout == "out_in" else wq.T)
                return sum(float((y - r).double().pow(2).sum())
                           for y, r in zip(self.walk.peek(out), ref, strict=True))
            finally:
                for p, v in zip(params, saved, strict=True):
                    p.copy_(v)
        return error

    def _scales(self, x_mean, w_mean, r: float, g: ScaleGroup) -> torch.Tensor:
        """The candidate s [C] of ratio ``r``; channels fed by one producer channel (a
        LinearFold's channel map) share the scale of their pooled statistics."""
        cmap = g.fold.channel_map if isinstance(g.fold, LinearFold) else None
        if cmap is None:
            return search.candidate_scales(x_mean, w_mean, r, self.cfg.duo_scaling)
        n = int(cmap.max()) + 1
        x_mean = torch.zeros(n).scatter_reduce(0, cmap, x_mean, "mean", include_self=False)
        w_mean = torch.zeros(n).scatter_reduce(0, cmap, w_mean, "mean", include_self=False)
        return search.candidate_scales(x_mean, w_mean, r, self.cfg.duo_scaling)[cmap]

    def _search(self, x_mean, w_mean, weights, error, g: ScaleGroup):
        ones = torch.ones(weights[0].shape[1])
        errs: dict[float | None, float] = {None: error(ones)}
        best, best_s = None, ones
        for i in range(self.cfg.grid):
            r = i / self.cfg.grid
            s = self._scales(x_mean, w_mean, r, g)
            errs[r] = error(s)
            if errs[r] < errs[best]:
                best, best_s = r, s
        return best_s, best, errs

    def _reselect(self, g: ScaleGroup, weights, specs, grams, error, errs, x_mean, w_mean):
        """The best of the ``clip_select`` lowest-error ratios once each is clipped (one
        shrink ratio for both bounds, ``clip_grid / 2`` steps, as a cheap proxy)."""
        top = sorted(errs, key=errs.__getitem__)[:self.cfg.clip_select]
        best, measured = None, {}
        for r in top:
            s = torch.ones(weights[0].shape[1]) if r is None else self._scales(x_mean, w_mean,
                                                                                r, g)
            ss = torch.outer(s, s)
            scaled = []
            for w, spec, parts in zip(weights, specs, grams, strict=True):
                ws = w * s
                if search.can_clip(spec):
                    ws, _ = search.clip_rows(ws, spec, [(rows, h / ss) for rows, h in parts],
                                             self.cfg.max_shrink, max(self.cfg.clip_grid // 2, 1))
                scaled.append(ws)
            measured[r] = e = error(s, scaled)
            if best is None or e < best[0]:
                best = (e, s, r)
        return best[1], best[2], measured

    def _clip(self, g: ScaleGroup, specs, grams) -> dict[str, float]:
        """Clip each consumer's groups in place; returns the mean ratio per consumer."""
        out = {}
        for site, spec, parts in zip(g.consumers, specs, grams, strict=True):
            if not search.can_clip(spec):
                continue
            param = fetch_attr(self.gm, str(site.weight_node.target))
            w = canonical_weight(param, site.op).detach().float()  # [N, C], scaled
            clipped, ratios = search.clip_rows(w, spec, parts, self.cfg.max_shrink,
                                               self.cfg.clip_grid, self.cfg.clip_separate)
            clipped = clipped.to(param.dtype)
            param.copy_(clipped if site.op.weight_layout == "out_in" else clipped.T)
            out[site.fqn or site.node.name] = float(ratios.mean())
        return out


def _row(g: ScaleGroup) -> dict[str, Any]:
    return {"activation": g.activation.name, "consumers": [s.fqn for s in g.consumers],
            "fold": "none", "producer": g.fold.fqn if g.fold else None, "reason": g.reason}
