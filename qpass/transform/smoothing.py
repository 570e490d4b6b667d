"""The arithmetic of per-channel smoothing: scales from statistics, the quantized error of a
group under given scales, and writing the scales into the graph's tensors.

For a group whose linears read X [tokens, C] with weights W_i [N_i, C]::

    s_j = max|X_j|^alpha / max_i max|W_i[:, j]|^(1 - alpha)       (Xiao et al., SmoothQuant)
    X W_i^T = (X diag(s)^-1) (W_i diag(s))^T

diag(s)^-1 goes into the fold (norm weight, producing linear's rows, or an explicit multiply),
diag(s) into every consumer's weight columns.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx

from qpass import numerics
from qpass.config import LayerPrecision
from qpass.convert.weights import quantize_weight
from qpass.observe import make_observer
from qpass.quantizable import Site, canonical_weight, fetch_attr
from qpass.transform.groups import LinearFold, NormFold, ScaleGroup

MIN_SMOOTH = 1e-5  # smallest scale s_j; keeps the fold well-conditioned


def consumer_weights(gm: fx.GraphModule, group: ScaleGroup) -> list[torch.Tensor]:
    """The consumers' weights as [N_i, C] (out, in) float64 copies."""
    return [canonical_weight(fetch_attr(gm, str(s.weight_node.target)), s.op).double()
            for s in group.consumers]


def smooth_scales(amax: torch.Tensor, wmax: torch.Tensor, alpha: float,
                  cmap: torch.Tensor | None = None) -> torch.Tensor:
    """s [C] for one alpha. With a channel map (linear fold), channels fed by one producer
    channel share its scale: the statistics are reduced (max) per producer channel first."""
    amax, wmax = amax.double(), wmax.double()
    if cmap is not None:
        n = int(cmap.max()) + 1
        amax = torch.zeros(n, dtype=torch.float64).scatter_reduce(0, cmap, amax, "amax")
        wmax = torch.zeros(n, dtype=torch.float64).scatter_reduce(0, cmap, wmax, "amax")
    s = amax.pow(alpha) / wmax.pow(1.0 - alpha)
    dead = (amax == 0) | (wmax == 0) | ~torch.isfinite(s)
    s = torch.where(dead, torch.ones_like(s), s.clamp(min=MIN_SMOOTH))
    return s if cmap is None else s[cmap]


def _fake_quant_activation(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                           prec: LayerPrecision) -> torch.Tensor:
    spec = prec.activation
    if spec is None:
        return x
    if spec.sink_tokens:  # sampled rows have no positions: the search sees one range
        spec = dataclasses.replace(spec, sink_tokens=0)
    if spec.dynamic:
        scale, zp = numerics.dynamic_qparams_per_token(x, spec.fmt, spec.symmetric)
    elif spec.observer == "minmax":  # exactly the range MinMax sees on all smoothed data
        scale, zp = numerics.qparams_from_range(lo.min(), hi.max(), spec.fmt, spec.symmetric)
    else:  # a clipping observer: its choice on the sampled rows
        observer = make_observer(spec)
        observer.update(x)
        scale, zp = observer.qparams()
    return numerics.fake_quantize(x, scale, zp, spec.fmt)


def group_error(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                weights: list[torch.Tensor], s: torch.Tensor, prec: LayerPrecision,
                row_weights: torch.Tensor | None = None) -> float:
    """Sum over consumers of the relative squared output error ||Q(X/s) Q(W s)^T - X W^T||^2
    / ||X W^T||^2 on the sampled rows ``x`` [R, C], each row's squares weighted by
    ``row_weights`` [R] (the rows it stands for; 1 if None); ``lo``/``hi``: per-channel ranges
    of X."""
    s32 = s.float()
    xq = _fake_quant_activation(x / s32, lo / s32, hi / s32, prec)
    rw = torch.ones(x.shape[0], dtype=torch.float64) if row_weights is None \
        else row_weights.double()
    err = 0.0
    for w in weights:  # [N, C]
        ws = (w * s[None, :]).float()
        wq = quantize_weight(ws, prec.weight).dequantize() if prec.weight else ws.T  # [C, N]
        ref = x.double() @ w.T
        e2 = ((xq.double() @ wq.double()) - ref).pow(2).sum(dim=1)  # [R]
        err += float((rw * e2).sum() / (rw * ref.pow(2).sum(dim=1)).sum().clamp(min=1e-30))
    return err


def _scale_site_weight(gm: fx.GraphModule, site: Site, factor: torch.Tensor, side: str) -> None:
    """Multiply a site's weight in place: ``side="in"`` its input columns, ``"out"`` its rows."""
    w = fetch_attr(gm, str(site.weight_node.target))
    out_in = site.op.weight_layout == "out_in"
    f = factor.to(w.dtype)
    if side == "in":
        w.mul_(f[None, :] if out_in else f[:, None])
    else:
        w.mul_(f[:, None] if out_in else f[None, :])
        bias = site.node.args[site.op.bias_arg] if site.op.bias_arg is not None and len(
            site.node.args) > site.op.bias_arg else None
        if isinstance(bias, fx.Node) and bias.op == "get_attr":
            fetch_attr(gm, str(bias.target)).mul_(f)


def apply_scales(gm: fx.GraphModule, group: ScaleGroup, s: torch.Tensor) -> str:
    """Fold diag(s)^-1 upstream and diag(s) into the consumers; returns how it was folded."""
    inv = (1.0 / s.double())
    fold = group.fold
    if isinstance(fold, NormFold):
        for target in (fold.weight, fold.bias):
            if target is not None:
                t = fetch_attr(gm, target)
                t.mul_(inv.to(t.dtype))
        how = fold.kind
    elif isinstance(fold, LinearFold):
        n = int(fold.channel_map.max()) + 1
        t_inv = torch.ones(n, dtype=torch.float64).scatter(0, fold.channel_map, inv)
        _scale_site_weight(gm, fold.site, t_inv, "out")
        how = "linear"
    else:
        _insert_multiply(gm, group, inv.float())
        how = "explicit_multiply"
    for site in group.consumers:
        _scale_site_weight(gm, site, s.double(), "in")
    return how


def _insert_multiply(gm: fx.GraphModule, group: ScaleGroup, inv: torch.Tensor) -> None:
    x = group.activation
    name = f"qpass_smooth_{x.name}"
    gm.register_buffer(name, inv)
    with gm.graph.inserting_after(x):
        inv_node = gm.graph.get_attr(name)
    with gm.graph.inserting_after(inv_node):
        scaled = gm.graph.call_function(torch.ops.aten.mul.Tensor, (x, inv_node))
    scaled.meta.update({k: v for k, v in x.meta.items() if k in ("val", "nn_module_stack")})
    for site in group.consumers:
        site.node.update_arg(site.op.activation_arg, scaled)
