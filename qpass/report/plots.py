"""The report's figures, drawn with matplotlib (Agg, no display) into PNG bytes."""

from __future__ import annotations

import io
import math
from typing import Any

from qpass.report.layers import OUTLIER_ABS, ActivationStats, LayerReport

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")


def pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("the quantization report draws with matplotlib, which is not "
                          "installed: pip install 'qpass[report]' (or pip install matplotlib)"
                          ) from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, left: float = 0.06, bottom: float = 0.2) -> bytes:
    buf = io.BytesIO()
    fig.subplots_adjust(left=left, right=0.97, bottom=bottom, top=0.9, wspace=0.15, hspace=0.35)
    fig.savefig(buf, format="png", dpi=80)
    pyplot().close(fig)
    return buf.getvalue()


def depth_figure(report: LayerReport) -> bytes:
    """Per-site output SQNR through depth: quantized alone (local) and with everything
    upstream quantized too (accumulated)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.6))
    idx = list(range(len(report.sites)))
    for attr, label, style in (("local_sqnr", "this layer alone (local)", "o"),
                               ("accumulated_sqnr", "with all layers before it (accumulated)",
                                "-")):
        ys = [getattr(s, attr) for s in report.sites]
        ys = [y if math.isfinite(y) else math.nan for y in ys]
        ax.plot(idx, ys, style, ms=3, lw=1.2, label=label)
    ax.set_xlabel("quantization site, in graph order (input -> output)")
    ax.set_ylabel("output SQNR (dB, higher is better)")
    ax.set_title("Error through depth")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return png_bytes(fig)


def activation_figure(stats: ActivationStats) -> bytes:
    """Left: the float values (log counts) with each observer's clip range. Right: max |x|
    per input channel, the outlier columns standing out."""
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 2.8), gridspec_kw={"width_ratios": [3, 2]})
    edges = stats.hist_edges
    ax.stairs([max(c, 0.5) for c in stats.hist_counts], edges, fill=True, color="#bbbbbb")
    ax.set_yscale("log")
    for i, o in enumerate(stats.observers):
        if o.diag is None:
            continue
        color = _COLORS[i % len(_COLORS)]
        ax.axvline(o.lo, color=color, ls="--", lw=1)
        ax.axvline(o.hi, color=color, ls="--", lw=1, label=o.name)
    ax.set_xlim(min(edges[0], *(o.lo for o in stats.observers if o.diag)) * 1.05,
                max(edges[-1], *(o.hi for o in stats.observers if o.diag)) * 1.05)
    ax.set_title("float values and int8 clip ranges", fontsize=9)
    ax.legend(fontsize=7, ncol=3, loc="upper right")
    bx.plot(stats.channel_amax, lw=0.8)
    bx.axhline(OUTLIER_ABS, color="#d62728", ls=":", lw=1)
    bx.set_yscale("log")
    bx.set_title("max |x| per input channel", fontsize=9)
    bx.set_xlabel("channel")
    return png_bytes(fig)


def accuracy_figure(metric: str, rows: list[tuple[str, float]]) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.45 * len(rows)))
    names, values = [r[0] for r in rows][::-1], [r[1] for r in rows][::-1]
    ax.barh(names, values, color=_COLORS[0])
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    ax.set_xlabel("perplexity (lower is better)" if metric == "perplexity"
                  else "mean cosine similarity (higher is better)")
    ax.set_xlim(0, max(values) * 1.2 if values else 1)
    return png_bytes(fig, left=0.42, bottom=0.8 / (0.8 + 0.45 * len(rows)))
