"""The report as one self-contained HTML page: tables and base64-embedded PNGs."""

from __future__ import annotations

import base64
import html
import math
from typing import Any

from qpass.config import PerChannel, PerGroup, QuantSpec
from qpass.report.layers import ActivationStats, LayerReport

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:2px 6px;
font-size:12px;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}
img{max-width:100%;display:block}pre{background:#f6f6f6;padding:8px;font-size:12px;
overflow:auto}h3{margin:18px 0 4px;font-size:14px}.bad{color:#c00;font-weight:600}
.note{color:#555;font-size:12px}"""


def spec_text(spec: QuantSpec) -> str:
    g = spec.granularity
    gran = type(g).__name__.replace("Per", "per_").lower()
    if isinstance(g, PerGroup):
        gran += str(g.size)
    elif isinstance(g, PerChannel) and g.axis != 0:
        gran += f"(axis={g.axis})"
    kind = "dynamic" if spec.dynamic else f"static/{spec.observer}"
    return f"{spec.format} {gran} {'sym' if spec.symmetric else 'asym'} {kind}"


def esc(v: Any) -> str:
    return html.escape(str(v))


def num(v: float | None, spec: str = ".1f", pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "exact" if v > 0 else "-inf"
    return format(100 * v if pct else v, spec) + ("%" if pct else "")


def img(png: bytes, alt: str, src: str | None = None) -> str:
    data = src or "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="{data}">'


def table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{esc(h)}</th>'
                 for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def layer_table(report: LayerReport, precisions: dict[str, dict[str, Any]]) -> str:
    rows = []
    for i, s in enumerate(report.sites):
        p = precisions.get(s.node, {})
        a = report.activations.get(s.activation)
        cols = a.outlier_columns() if a else []
        diag = a.assigned if a else None
        rows.append([
            str(i), esc(s.fqn), esc(s.op), esc(p.get("precision", "?")),
            esc(p.get("reason", "")) + (f'<br><span class="note">{esc(" > ".join(by))}</span>'
                                        if (by := p.get("assigned_by")) else ""),
            num(s.weight and s.weight.sqnr_db), num(diag and diag.clip_rate, ".2f", True),
            num(diag and diag.level_utilization, ".0f", True), num(diag and diag.sqnr_db),
            esc(", ".join(f"{c} ({v:.0f})" for c, v in cols)) or "-",
            num(s.local_sqnr), num(s.accumulated_sqnr)])
    return table(["#", "module", "op", "precision", "why (assigned by)", "W SQNR dB",
                  "A clip", "A levels used", "A SQNR dB", "outlier columns (max|x|)",
                  "local out SQNR", "accum. out SQNR"], rows, left=5)


def observer_summary(report: LayerReport) -> str:
    names = [o.name for o in next(iter(report.activations.values())).observers] \
        if report.activations else []
    rows = []
    for name in names:
        choices = [next(o for o in a.observers if o.name == name)
                   for a in report.activations.values()]
        ok = [c.diag for c in choices if c.diag is not None]
        best = sum(1 for a in report.activations.values()
                   if _best(a) == name)
        sq = sorted(d.sqnr_db for d in ok)
        rows.append([esc(name), num(sq[len(sq) // 2] if sq else None),
                     num(sum(d.clip_rate for d in ok) / len(ok) if ok else None, ".3f", True),
                     num(sum(d.level_utilization for d in ok) / len(ok) if ok else None,
                         ".0f", True), f"{best} of {len(choices)}",
                     str(len(choices) - len(ok)) if len(ok) < len(choices) else "0"])
    return table(["observer", "median SQNR dB", "mean clip", "mean levels used",
                  "best SQNR on", "failed"], rows)


def _best(a: ActivationStats) -> str | None:
    ok = [o for o in a.observers if o.diag is not None]
    return max(ok, key=lambda o: o.diag.sqnr_db).name if ok else None


def activation_section(key: str, a: ActivationStats, figure: str) -> str:
    rows = [[esc(o.name) + (" (best)" if o.name == _best(a) else ""), num(o.lo, ".4g"),
             num(o.hi, ".4g"), num(o.diag and o.diag.clip_rate, ".3f", True),
             num(o.diag and o.diag.level_utilization, ".0f", True),
             num(o.diag and o.diag.sqnr_db), esc(o.error)] for o in a.observers]
    assigned = "" if a.assigned is None else (
        f'<p class="note">assigned: {esc(a.assigned_spec)}: clip '
        f'{num(a.assigned.clip_rate, ".3f", True)}, levels used '
        f'{num(a.assigned.level_utilization, ".0f", True)}, SQNR {num(a.assigned.sqnr_db)} dB</p>')
    return (f'<h3 id="{esc(key)}">{esc(", ".join(a.consumers))}</h3>'
            f'<p class="note">input produced by node {esc(a.source)}</p>{figure}{assigned}'
            + table(["int8 per-tensor observer", "clip lo", "clip hi", "clip rate",
                     "levels used", "SQNR dB", "error"], rows))
