"""The report's numbers, per site and per activation tensor, from two runs of the graph.

Run 1 (float): each distinct activation gets its value histogram, its per-channel max |x|
(outlier columns) and, for every registered observer, the int8 per-tensor clip range it
chooses with clip rate, level utilization and SQNR (``qpass.observe.diagnostics``); each site
gets the diagnostics of its weight and activation under the precision it was assigned, and
its *local* output SQNR: the site quantized alone, fed the float input. Run 2 (simulated):
every site computes what the converted model computes, so a site's *accumulated* output SQNR
carries the error of all the quantized sites before it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from qpass import numerics
from qpass.config import PerTensor, QuantSpec
from qpass.observe import OBSERVERS, make_observer
from qpass.observe.diagnostics import Diagnostics, diagnose, diagnose_observer
from qpass.report.tap import fake_quant_activation, run_tap, static_qparams
from qpass.state import get_state

log = logging.getLogger(__name__)
OUTLIER_ABS = 6.0  # LLM.int8()'s threshold: |x| above it marks an outlier column
SAMPLE_ROWS = 256  # output rows kept per site to compare the two runs
# The observers the report compares by default: one of each built-in family (ema_minmax
# equals minmax on one batch). Pass observers=None for every registered one (slower: the
# histogram observers cost a second or more per tensor on 2 cores).
REPORT_OBSERVERS = ("minmax", "percentile", "mse", "kl", "aciq")


@dataclass
class ObserverChoice:
    name: str
    lo: float = math.nan  # the clip range [lo, hi] of the chosen int8 scale
    hi: float = math.nan
    diag: Diagnostics | None = None
    error: str = ""


@dataclass
class ActivationStats:
    source: str  # the FX node that produces it
    consumers: list[str]  # module FQNs of the sites that read it
    hist_counts: list[float]
    hist_edges: list[float]
    channel_amax: list[float]  # max |x| per input channel
    observers: list[ObserverChoice]
    assigned: Diagnostics | None = None  # under the consumers' own activation spec
    assigned_spec: str = ""

    def outlier_columns(self, top: int = 8) -> list[tuple[int, float]]:
        amax = torch.tensor(self.channel_amax)
        median = float(amax.median()) if amax.numel() else 0.0
        hot = ((amax > OUTLIER_ABS) & (amax > 10 * median)).nonzero().flatten()
        ranked = sorted(hot.tolist(), key=lambda c: -self.channel_amax[c])[:top]
        return [(c, self.channel_amax[c]) for c in ranked]


@dataclass
class SiteStats:
    node: str
    fqn: str
    op: str
    activation: str  # key into LayerReport.activations
    weight: Diagnostics | None = None
    local_sqnr: float = math.nan
    accumulated_sqnr: float = math.nan


@dataclass
class LayerReport:
    sites: list[SiteStats] = field(default_factory=list)
    activations: dict[str, ActivationStats] = field(default_factory=dict)
    output_sqnr: float = math.nan  # the whole model's output, simulated vs float


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    err = float((ref.double() - test.double()).square().sum())
    signal = float(ref.double().square().sum())
    return math.inf if err == 0 else 10 * math.log10(max(signal, 1e-300) / err)


def _rows(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().reshape(-1, t.shape[-1])
    step = max(1, flat.shape[0] // SAMPLE_ROWS)
    return flat[::step][:SAMPLE_ROWS].float().clone()


def observer_choices(x: torch.Tensor,
                     names: tuple[str, ...] | None = REPORT_OBSERVERS) -> list[ObserverChoice]:
    """The int8 symmetric per-tensor range each observer in ``names`` (``None``: every
    registered one) chooses for ``x``."""
    out = []
    for name in OBSERVERS.names() if names is None else names:
        choice = ObserverChoice(name)
        try:
            spec = QuantSpec("int8", symmetric=True, granularity=PerTensor(), observer=name)
            obs = make_observer(spec)
            obs.update(x)
            scale, zp = obs.qparams()
            fmt = spec.fmt
            lo, hi = numerics.dequantize(torch.tensor([fmt.qmin, fmt.qmax]).to(fmt.storage),
                                         scale, zp).tolist()
            choice.lo, choice.hi, choice.diag = lo, hi, diagnose(x, scale, zp, spec)
        except Exception as exc:  # a plugin observer must not break the report
            choice.error = f"{type(exc).__name__}: {exc}"
        out.append(choice)
    return out


def _activation_stats(gm: fx.GraphModule, site: Any, x: torch.Tensor, prec: Any,
                      fqn: str, observers: tuple[str, ...] | None) -> ActivationStats:
    x = x.detach().float()
    lo, hi = float(x.min()), float(x.max())
    counts = torch.histc(x, bins=120, min=lo, max=hi if hi > lo else lo + 1)
    edges = torch.linspace(lo, hi if hi > lo else lo + 1, 121)
    amax = x.abs().reshape(-1, x.shape[-1]).amax(0)
    stats = ActivationStats(site.activation_node.name, [fqn], counts.tolist(), edges.tolist(),
                            amax.tolist(), observer_choices(x, observers))
    spec = prec.activation if prec is not None else None
    if spec is not None:
        qp = static_qparams(gm, site, spec)
        if qp is None:
            qp = numerics.dynamic_qparams_per_token(x, spec.fmt, spec.symmetric)
        stats.assigned = diagnose(x, qp[0], qp[1], spec)
        from qpass.report.html import spec_text

        stats.assigned_spec = spec_text(spec)
    return stats


def collect(prepared: fx.GraphModule, inputs: tuple[torch.Tensor, ...],
            observers: tuple[str, ...] | None = REPORT_OBSERVERS) -> LayerReport:
    """Both runs over ``inputs`` (one batch; stack windows along the batch axis);
    ``observers``: the ones to compare on every activation (``None``: all registered)."""
    state = get_state(prepared, "report")
    report = LayerReport()
    float_rows: dict[str, torch.Tensor] = {}

    def on_float(site, x, w, y) -> None:
        name = site.node.name
        prec = state.precisions.get(name)
        fqn = state.fqns.get(name) or name
        key = site.activation_node.name
        if key not in report.activations:
            report.activations[key] = _activation_stats(prepared, site, x, prec, fqn,
                                                             observers)
        elif fqn not in report.activations[key].consumers:
            report.activations[key].consumers.append(fqn)
        stats = SiteStats(name, fqn, site.op_type, key)
        float_rows[name] = _rows(y)
        if prec is not None and not prec.is_float and prec.weight is not None:
            obs = make_observer(prec.weight)
            obs.update(w.detach().float())
            stats.weight = diagnose_observer(w.detach().float(), obs)
            if prec.outlier_threshold is None:
                rows = _rows(x)
                w_dq = tap_w_dq(w, prec)
                # quantized before sampling: a sink-token spec knows its rows by position
                xq = fake_quant_activation(prepared, site, x.detach(), prec.activation)
                local = _rows(xq) @ w_dq
                stats.local_sqnr = sqnr_db(rows @ w.detach().float().T, local)
        report.sites.append(stats)

    def on_simulated(site, x, w, y) -> None:
        ref = float_rows.get(site.node.name)
        stat = next(s for s in report.sites if s.node == site.node.name)
        if ref is not None:
            stat.accumulated_sqnr = sqnr_db(ref, _rows(y))

    y_float = run_tap(prepared, inputs, on_float)
    y_sim = run_tap(prepared, inputs, on_simulated, simulate=True)
    if isinstance(y_float, torch.Tensor) and isinstance(y_sim, torch.Tensor):
        report.output_sqnr = sqnr_db(y_float, y_sim)
    return report


def tap_w_dq(w: torch.Tensor, prec: Any) -> torch.Tensor:
    from qpass.convert.weights import quantize_weight

    return quantize_weight(w.detach().float(), prec.weight).dequantize()
