"""The quantization report: one self-contained HTML file (PNGs embedded, and written next to
it) that says, layer by layer, what the recipe did and what it cost.

    qpass.report.build_report(prepared, (ids,), "exports/report.html",
                              accuracy=("perplexity", [("FP32", 23.66), ("w8a8", 24.20)]))

``prepared`` is the calibrated graph from ``qpass.prepare`` / ``qpass.calibrate`` (the report
reads its float graph, observers and recorded precisions); ``inputs`` is one batch of
calibration data (see ``qpass.report.layers`` for what is measured). Precisions and their
reasons come from ``qpass.precision_report`` when the policies package provides it, else from
the recorded precisions alone.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from tqdm.auto import tqdm

from qpass.report import html as h
from qpass.report.layers import REPORT_OBSERVERS, LayerReport, collect
from qpass.state import get_state

log = logging.getLogger(__name__)
__all__ = ["LayerReport", "build_report", "collect"]


def precision_rows(prepared: fx.GraphModule) -> dict[str, dict[str, Any]]:
    """node name -> {"precision", "reason", "assigned_by"}; degrades without the policies
    package's precision_report."""
    try:
        from qpass.policies.report import precision_report

        return {r["node"]: r for r in precision_report(prepared)}
    except ImportError:
        state = get_state(prepared, "report")
        return {name: {"precision": "float" if p.is_float else " | ".join(
            f"{role} {h.spec_text(s)}" for role, s in (("W", p.weight), ("A", p.activation))
            if s is not None), "reason": p.reason} for name, p in state.precisions.items()}


def _accuracy(metric: str, rows: list[tuple[str, float]]) -> str:
    if not rows:
        return '<p class="note">no accuracy measured</p>'
    base = rows[0][1]
    delta = metric == "perplexity"
    body = [[h.esc(n), f"{v:.4f}", f"{100 * (v / base - 1):+.2f}%" if delta else "-"]
            for n, v in rows]
    from qpass.report.plots import accuracy_figure

    head = ["variant", "PPL" if delta else "mean cosine", "Δ vs first"]
    return h.table(head, body) + h.img(accuracy_figure(metric, rows), "accuracy")


def build_report(prepared: fx.GraphModule, inputs: tuple[torch.Tensor, ...],
                 path: str | os.PathLike, *, title: str = "qpass quantization report",
                 accuracy: tuple[str, list[tuple[str, float]]] = ("perplexity", []),
                 observers: tuple[str, ...] | None = REPORT_OBSERVERS,
                 progress: bool = False) -> Path:
    """Measure, draw and write the report; returns ``path``. PNGs also go to
    ``<path stem>_files/``."""
    from qpass import __version__
    from qpass.recipe_files import recipe_to_text
    from qpass.report.plots import activation_figure, depth_figure

    path = Path(path)
    state = get_state(prepared, "report")
    report = collect(prepared, inputs, observers)
    files = path.with_name(path.stem + "_files")
    files.mkdir(parents=True, exist_ok=True)

    def figure(png: bytes, name: str) -> str:
        (files / name).write_bytes(png)
        return h.img(png, name)

    sections = []
    for i, (key, a) in enumerate(tqdm(report.activations.items(), desc="qpass report",
                                      unit="plot", disable=not progress)):
        sections.append(h.activation_section(key, a, figure(activation_figure(a),
                                                            f"activation_{i:03d}.png")))
    quantized = sum(not p.is_float for p in state.precisions.values())
    out_sqnr = h.num(report.output_sqnr) if math.isfinite(report.output_sqnr) or \
        report.output_sqnr > 0 else "-"
    body = [
        f"<h1>{h.esc(title)}</h1>",
        f'<p class="note">qpass {__version__}, {datetime.datetime.now():%Y-%m-%d %H:%M}; '
        f"{quantized} of {len(state.precisions)} sites quantized; statistics from "
        f"{h.esc(' x '.join(map(str, inputs[0].shape)))} calibration tokens.</p>",
        "<h2>Accuracy</h2>", _accuracy(*accuracy),
        "<h2>Error through depth</h2>", figure(depth_figure(report), "depth.png"),
        f'<p class="note">Output SQNR of each site against the float model. <b>local</b>: the '
        "site quantized alone, fed float input; <b>accumulated</b>: every site before it "
        f"quantized too (the converted model's numerics, simulated). Model output SQNR: "
        f"{out_sqnr} dB.</p>",
        "<h2>Layers</h2>", h.layer_table(report, precision_rows(prepared)),
        "<h2>Observers (int8 per tensor, on every activation)</h2>", h.observer_summary(report),
        "<h2>Activations</h2>", *sections,
        "<h2>Recipe</h2>", f"<pre>{h.esc(recipe_to_text(state.recipe, '.yaml'))}</pre>"]
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{h.esc(title)}</title>'
            f"<style>{h.CSS}</style></head><body>{''.join(body)}</body></html>")
    path.write_text(page, encoding="utf-8")
    log.info("qpass report: %s (%d layers, %d activations)", path, len(report.sites),
             len(report.activations))
    return path
