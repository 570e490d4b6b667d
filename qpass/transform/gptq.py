"""The GPTQ pass (Frantar et al., 2023): second-order weight rounding, layer by layer.

The pass walks the graph with every calibration batch at once (``layerwise``). At each site
whose weight spec is an integer format it accumulates the Hessian H = 2XᵀX/n of the site's
input — computed by the model with every earlier site already quantized — runs the solver
(``gptq_solver``), writes the dequantized weight back into the graph and moves on, so later
layers see the quantized ones. Linears that read one input (q/k/v, gate/up) share one H.

The integers and parameters go to ``ctx.quantized_weights``; convert stores them as they are
instead of rounding the float weight to nearest. Run GPTQ after passes that change weights
(AWQ, SmoothQuant): convert refuses integers that no longer match the graph's weight.

Memory: the model, the live activations of one point of the graph for all batches, and one
Hessian (K x K float64) at a time: it does not grow with depth.
"""

from __future__ import annotations

import fnmatch
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx as fx

from qpass.config import LayerPrecision, PerGroup
from qpass.convert.weights import block_size, quantize_weight
from qpass.passes import PASSES, Pass, PassContext, PassResult
from qpass.quantizable import Site, canonical_weight, fetch_attr, find_sites
from qpass.transform.gptq_solver import gptq_quantize, row_parts
from qpass.transform.hessian import Hessian, float_target
from qpass.transform.layerwise import LayerwiseWalk
from qpass.transform.site_hessians import SiteHessians

log = logging.getLogger(__name__)


@PASSES.register("gptq")
@dataclass(frozen=True)
class GPTQ(Pass):
    """``percdamp``: damping λ = percdamp · mean(diag H) added to H (raise it when a Hessian
    cannot be factored). ``blocksize``: columns updated together (lazy batch updates).
    ``act_order``: quantize columns by decreasing H_ii, with static group parameters.
    ``skip``: module-FQN globs GPTQ leaves to round-to-nearest.
    ``attention_values``: solve value projections against the attention-weighted Hessian
    of each value head; ``residual_weighted``: weigh the tokens of linears that write into the
    residual stream by 1 / mean(r²) of the residual (``site_hessians`` says why; on SmolLM2
    the plain XᵀX makes GPTQ worse than round-to-nearest). ``sequential``: each layer's
    inputs come from the model with every earlier layer already quantized (the default, as
    GPTQ's authors do); ``False`` takes them from the float model. ``asymmetric``: aim each
    layer at the float model's output instead of its own float weights on the quantized inputs
    (GPTAQ's asymmetric calibration; a second walk computes the float model's inputs beside
    the quantized ones, see ``hessian.float_target``), blended by this factor in [0, 1]; 0 is
    textbook GPTQ; without ``sequential`` there is nothing to correct. On SmolLM2 (4-bit g128,
    8 x 512 calibration tokens) PPL 26.71 at 0, 26.40 / 26.41 / 26.87 / 29.09 at 0.125 / 0.25
    / 0.5 / 1: the full least-squares target overfits the few calibration tokens, a quarter
    of it helps; the second walk costs ~1.4x the time.

    The format, symmetry and granularity (per channel, per tensor or per group of 32/64/128...)
    come from each site's weight spec, as the recipe's policies assigned it."""

    percdamp: float = 0.01
    shrinkage: float = 0.5
    blocksize: int = 128
    act_order: bool = False
    skip: tuple[str, ...] = ()
    attention_values: bool = True
    residual_weighted: bool = True
    sequential: bool = True
    asymmetric: float = 0.25

    stage: ClassVar[str] = "weights"

    def __post_init__(self) -> None:
        if not 0.0 <= self.percdamp <= 1.0:
            raise ValueError(f"GPTQ.percdamp={self.percdamp!r} is not valid; allowed: a number "
                             "in [0, 1] (0.01 is the paper's default)")
        if not 0.0 <= self.shrinkage <= 1.0:
            raise ValueError(f"GPTQ.shrinkage={self.shrinkage!r} is not valid; allowed: a number "
                             "in [0, 1] (0 keeps the textbook Hessian, 1 rounds to nearest)")
        if not 0.0 <= self.asymmetric <= 1.0:
            raise ValueError(f"GPTQ.asymmetric={self.asymmetric!r} is not valid; allowed: a "
                             "number in [0, 1] (0 is textbook GPTQ, 1 aims fully at the float "
                             "model's outputs)")
        if self.blocksize < 1:
            raise ValueError(f"GPTQ.blocksize={self.blocksize!r} is not valid; allowed: a "
                             "positive number of columns, e.g. 128")
        if isinstance(self.skip, str):
            raise ValueError(f"GPTQ.skip={self.skip!r} is not valid; allowed: a tuple of globs")

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        assert ctx.precisions is not None
        all_sites = find_sites(gm)
        report: dict[str, Any] = {"layers": [], "skipped": {}}
        sites = []
        for s in all_sites:
            why = self._why_not(s, ctx.precisions.get(s.node.name))
            if why:
                report["skipped"][s.fqn or s.node.name] = why
            else:
                sites.append(s)
        _check_sites(gm, sites, ctx.precisions)
        if not sites:
            return PassResult(gm, False, report)
        start = time.perf_counter()
        walk = LayerwiseWalk(gm, ctx.batches)
        solver = _Solver(self, gm, ctx, walk, sites, report)
        walk.run([s.node for s in sites], solver.before, ctx.progress, "qpass gptq")
        if solver.shadow is not None:
            solver.shadow.close()
        for weight, update in solver.deferred:
            weight.copy_(update)
        report["seconds"] = time.perf_counter() - start
        solver.warn_short_data()
        log.info("qpass gptq: %d layers in %.1f s", len(sites), report["seconds"])
        return PassResult(gm, True, report)

    def _why_not(self, site: Site, prec: LayerPrecision | None) -> str:
        if prec is None or prec.weight is None:
            return "float weight"
        if prec.weight.fmt.is_float:
            return f"{prec.weight.format} weight: GPTQ rounds to integer grids"
        if prec.outlier_threshold is not None:
            return "LLM.int8() outlier split: convert quantizes its weight"
        hit = next((p for p in self.skip if fnmatch.fnmatchcase(site.fqn, p)), None)
        return f"GPTQ.skip pattern {hit!r}" if hit else ""


def _check_sites(gm: fx.GraphModule, sites: list[Site],
                 precisions: dict[str, LayerPrecision]) -> None:
    """Fail before any work on what would fail half-way: groups that do not tile a layer,
    and a weight read by two sites (GPTQ would round it twice for different inputs)."""
    bad, owners = [], {}
    for s in sites:
        g = precisions[s.node.name].weight.granularity
        k = canonical_weight(fetch_attr(gm, str(s.weight_node.target)), s.op).shape[1]
        try:
            if isinstance(g, PerGroup):
                block_size(k, g.size)
        except ValueError as exc:
            bad.append(f"{s.fqn or s.node.name}: {exc}")
        target = str(s.weight_node.target)
        if target in owners:
            raise ValueError(
                f"GPTQ: the weight {target!r} is read by two quantized ops, "
                f"{owners[target]} and {s.fqn or s.node.name}; GPTQ can round a weight for one "
                "input only. Keep one of them float or add it to GPTQ.skip")
        owners[target] = s.fqn or s.node.name
    if bad:
        raise ValueError(
            f"GPTQ: the weight groups of {len(bad)} layer(s) cannot be stored: "
            f"{'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}. Or give these layers "
            "PerChannel(0) weights (a rules policy), or keep them float")


class _Solver:
    """The walk's callback: one Hessian per input activation, freed after its last reader."""

    def __init__(self, cfg: GPTQ, gm: fx.GraphModule, ctx: PassContext, walk: LayerwiseWalk,
                 sites: list[Site], report: dict[str, Any]) -> None:
        self.cfg, self.gm, self.ctx, self.walk, self.report = cfg, gm, ctx, walk, report
        self.sites = {s.node: s for s in sites}
        self.pending: dict[fx.Node, int] = {}
        for s in sites:
            self.pending[s.activation_node] = self.pending.get(s.activation_node, 0) + 1
        self.hessians: dict[fx.Node, Hessian] = {}
        self.short: list[tuple[str, int, int]] = []  # (layer, tokens, features)
        self.special = SiteHessians(walk, sites, attention_values=cfg.attention_values,
                                    residual_weighted=cfg.residual_weighted, owner="gptq")
        self.deferred: list[tuple[torch.Tensor, torch.Tensor]] = []  # sequential=False
        # the float model's walk, kept level with ``walk``: it computes each site before the
        # solver overwrites the site's weight, so it always runs the float weights
        self.shadow = (LayerwiseWalk(gm, ctx.batches) if cfg.asymmetric and cfg.sequential
                       else None)  # sequential=False: the inputs are the float model's already

    def hessian(self, x: fx.Node) -> Hessian:
        if x not in self.hessians:
            values = self.walk.values(x)
            targets = self.shadow.values(x) if self.shadow else [None] * len(values)
            hess = Hessian.empty(values[0].shape[-1])
            for v, t in zip(values, targets, strict=True):
                hess.update(v, target=t)
            self.hessians[x] = hess
        return self.hessians[x]

    def before(self, node: fx.Node) -> None:
        site = self.sites[node]
        where = site.fqn or node.name
        spec = self.ctx.precisions[node.name].weight
        x = site.activation_node
        if self.shadow is not None:
            self.shadow.advance(node)
        hess = self.hessian(x)
        if self.shadow is not None:
            self.shadow.advance(node, through=True)  # with the float weight, before it changes
        start = time.perf_counter()
        weight = fetch_attr(self.gm, str(site.weight_node.target))
        w = canonical_weight(weight, site.op).detach().float().clone()  # [N, K]
        h = hess.value
        if hess.tokens < w.shape[1]:
            self.short.append((where, hess.tokens, w.shape[1]))
        rows, hessian = self.special.row_hessians(site, w.shape[0])
        target = w if hess.cross is None else float_target(
            w, h, hess.cross, self.cfg.asymmetric, self.cfg.percdamp, self.cfg.shrinkage,
            where, hess.tokens)
        res = gptq_quantize(target, h, spec, percdamp=self.cfg.percdamp,
                            shrinkage=self.cfg.shrinkage, blocksize=self.cfg.blocksize,
                            act_order=self.cfg.act_order,
                            where=f"{where} ({node.format_node()})", tokens=hess.tokens,
                            row_hessians=rows)
        dq = res.weight.dequantize()  # [K, N]: what convert will compute with
        update = dq.T if site.op.weight_layout == "out_in" else dq
        if self.cfg.sequential:
            weight.copy_(update)
        else:
            self.deferred.append((weight, update))
        self.ctx.quantized_weights[node.name] = res.weight
        err, err_rtn = _layer_errors(w, dq.T, quantize_weight(w, spec).dequantize().T,
                                     row_parts(w.shape[0], h, rows))
        self.report["layers"].append({
            "layer": where, "format": spec.format, "granularity": repr(spec.granularity),
            "tokens": hess.tokens, "hessian": hessian, "dead_features": res.dead_features,
            "rel_error": err, "rel_error_rtn": err_rtn, "seconds": time.perf_counter() - start})
        self.pending[x] -= 1
        if self.pending[x] == 0:
            del self.hessians[x]

    def warn_short_data(self) -> None:
        if not self.short:
            return
        where, tokens, k = max(self.short, key=lambda t: t[2])
        warnings.warn(
            f"GPTQ saw only {tokens} calibration tokens; {len(self.short)} layer(s) have more "
            f"input features than that (e.g. {where}: {k}), so their Hessians are singular and "
            "only the damping term holds them up. Give at least as many tokens as the widest "
            "layer's input features (GPTQ's authors use ~260k)", stacklevel=2)


def _layer_errors(w: torch.Tensor, w_gptq: torch.Tensor, w_rtn: torch.Tensor,
                  parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Relative layer output errors Σ tr(D H Dᵀ) / Σ tr(W H Wᵀ) of GPTQ's and RTN's weights,
    each set of rows under the Hessian GPTQ solved it with."""
    quad = torch.zeros(3)
    for rows, h in parts:
        stacked = torch.cat([w_gptq[rows] - w[rows], w_rtn[rows] - w[rows], w[rows]])
        quad += ((stacked @ h.float()) * stacked).sum(1).reshape(3, -1).sum(1)
    return float(quad[0] / quad[2]), float(quad[1] / quad[2])
