"""Which number format is most accurate for this model? Measured, tensor by tensor.

For every weight and activation tensor of a model's quantization sites (or those whose module
FQN matches a glob), ``compare_formats`` gives the dequantization error of

    int8 minmax   int8, symmetric, MinMax range
    int8 best     int8, symmetric, the observer with the highest SQNR here (WEIGHT_CANDIDATES
                  on weights, every registered observer on activations)
    fp8_e4m3      scale = max|x| / 448
    fp8_e5m2      scale = max|x| / 57344
    int4 g128     int4, symmetric, one scale per 128 consecutive input features

as relative MSE (``sum (x - x')^2 / sum x^2``) and SQNR (``-10 log10`` of it). Weights use one
scale per output channel (int4: per group); activations one scale per tensor, calibrated on
the data given (int4 g128: per group of each token, i.e. dynamic). All rounding goes through
``qpass.numerics`` (via the observers and ``qpass.observe.diagnostics``).
"""

from __future__ import annotations

import fnmatch
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx as fx

from qpass.config import PerChannel, PerGroup, PerTensor, QuantSpec
from qpass.observe import OBSERVERS, make_observer
from qpass.observe.diagnostics import diagnose_observer

log = logging.getLogger(__name__)
FORMAT_NAMES = ("int8 minmax", "int8 best", "fp8_e4m3", "fp8_e5m2", "int4 g128")
# "int8 best" searches every registered observer on activations; on weights (one range per
# output channel) only the observers whose per-channel cost stays small: the histogram
# searches (kl, mse) take minutes per weight matrix there.
WEIGHT_CANDIDATES = ("minmax", "percentile", "aciq")


@dataclass(frozen=True)
class FormatError:
    rel_mse: float
    sqnr_db: float
    note: str = ""  # int8 best: the observer; a format that does not apply: why


@dataclass
class TensorFormats:
    name: str  # "<fqn>.weight" or "<fqn> input"
    kind: str  # "weight" or "activation"
    shape: tuple[int, ...]
    errors: dict[str, FormatError] = field(default_factory=dict)

    def best(self) -> str:
        ok = {k: e for k, e in self.errors.items() if not math.isnan(e.sqnr_db)}
        return max(ok, key=lambda k: ok[k].sqnr_db) if ok else "-"


def _specs(kind: str) -> dict[str, QuantSpec]:
    gran = PerChannel(0) if kind == "weight" else PerTensor()
    return {"int8 minmax": QuantSpec("int8", True, gran),
            "fp8_e4m3": QuantSpec("fp8_e4m3", True, gran),
            "fp8_e5m2": QuantSpec("fp8_e5m2", True, gran),
            "int4 g128": QuantSpec("int4", True, PerGroup(128))}


def _error(x: torch.Tensor, spec: QuantSpec) -> FormatError:
    obs = make_observer(spec)
    obs.update(x)
    d = diagnose_observer(x, obs)
    rel = 0.0 if math.isinf(d.sqnr_db) and d.sqnr_db > 0 else 10 ** (-d.sqnr_db / 10)
    return FormatError(rel, d.sqnr_db)


def tensor_formats(x: torch.Tensor, name: str, kind: str) -> TensorFormats:
    """The five formats' errors on one tensor (weights [out, in]; activations [..., in])."""
    x = x.detach().float()
    out = TensorFormats(name, kind, tuple(x.shape))
    nan = FormatError(math.nan, math.nan)
    for label, spec in _specs(kind).items():
        try:
            out.errors[label] = _error(x, spec)
        except ValueError as exc:  # e.g. int4 g128 when 128 does not divide the features
            out.errors[label] = FormatError(math.nan, math.nan, str(exc).split(";")[0])
    best = None
    for observer in OBSERVERS.names() if kind == "activation" else WEIGHT_CANDIDATES:
        spec = QuantSpec("int8", True, _specs(kind)["int8 minmax"].granularity, observer=observer)
        try:
            e = _error(x, spec)
        except Exception as exc:  # an observer that does not support this granularity
            log.debug("observer %s skipped on %s: %s", observer, name, exc)
            continue
        if best is None or e.sqnr_db > best.sqnr_db:
            best = FormatError(e.rel_mse, e.sqnr_db, observer)
    out.errors["int8 best"] = best or nan
    out.errors = {k: out.errors[k] for k in FORMAT_NAMES}
    return out


def compare_formats(prepared: fx.GraphModule, inputs: tuple[torch.Tensor, ...],
                    layer: str = "*") -> list[TensorFormats]:
    """Every site's weight and (distinct) input activation whose FQN matches ``layer``, in
    graph order. ``prepared``: from ``qpass.prepare`` (any recipe: only the float graph and
    its sites are used); ``inputs``: one batch."""
    from qpass.report.tap import run_tap

    results: list[TensorFormats] = []
    seen: set[str] = set()
    state = prepared.meta["qpass"]

    def on_site(site: Any, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> None:
        fqn = state.fqns.get(site.node.name) or site.node.name
        if not fnmatch.fnmatchcase(fqn, layer):
            return
        results.append(tensor_formats(w, f"{fqn}.weight", "weight"))
        if site.activation_node.name not in seen:
            seen.add(site.activation_node.name)
            results.append(tensor_formats(x, f"{fqn} input", "activation"))

    run_tap(prepared, inputs, on_site)
    if not results:
        raise ValueError(f"no quantization site matches the layer glob {layer!r}; sites look "
                         f"like {', '.join(list(state.fqns.values())[:3])}")
    return results


def summarize(results: list[TensorFormats]) -> list[dict[str, Any]]:
    """Per kind and format: median SQNR, median relative MSE, and how often it is best."""
    rows = []
    for kind in ("weight", "activation"):
        group = [r for r in results if r.kind == kind]
        for f in FORMAT_NAMES:
            vals = sorted(r.errors[f].sqnr_db for r in group if not math.isnan(r.errors[f].sqnr_db))
            rels = sorted(r.errors[f].rel_mse for r in group if not math.isnan(r.errors[f].rel_mse))
            if not vals:
                continue
            rows.append({"kind": kind, "format": f, "tensors": len(vals),
                         "median_sqnr_db": vals[len(vals) // 2],
                         "median_rel_mse": rels[len(rels) // 2],
                         "best_on": sum(r.best() == f for r in group)})
    return rows


def to_json(results: list[TensorFormats]) -> dict[str, Any]:
    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return {"formats": list(FORMAT_NAMES), "summary": summarize(results),
            "tensors": [{**{k: v for k, v in asdict(r).items() if k != "errors"},
                         "errors": {f: {k: clean(v) for k, v in asdict(e).items()}
                                    for f, e in r.errors.items()}} for r in results]}


def formats_figure(results: list[TensorFormats]) -> bytes:
    """SQNR of each format, tensor by tensor through depth: weights above, activations below."""
    from qpass.report.plots import png_bytes, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(11, 6), sharex=False)
    for ax, kind in zip(axes, ("weight", "activation"), strict=True):
        group = [r for r in results if r.kind == kind]
        for f in FORMAT_NAMES:
            ax.plot([r.errors[f].sqnr_db for r in group], lw=1, label=f)
        ax.set_title(f"{kind}s: SQNR by format (dB, higher is better)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=5)
    axes[1].set_xlabel("tensor, in graph order")
    return png_bytes(fig, left=0.06, bottom=0.08)
