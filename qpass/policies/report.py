"""The precision report as data: which precision each site got, and why.

``precision_report(gm)`` reads what ``qpass.prepare`` recorded (``state.precisions`` and the
policies' reports) from a prepared, calibrated or converted GraphModule and returns one plain
dict per site, in graph order, ready for JSON or the HTML report::

    {"node": "linear_3", "fqn": "model.layers.0.mlp.down_proj", "op": "linear",
     "weights": 884736, "float": False, "float_weights": 1152,
     "precision": "W int8 per_channel | A int8 per_token dyn",
     "weight": {...QuantSpec.to_dict()...} | None, "activation": {...} | None,
     "reason": "llm_int8 static: 2 of 1536 input columns with |x| > 6.0 stay float",
     "assigned_by": ["uniform", "keep_float", "llm_int8"],
     "sensitivity": {"rank": 17, "score": 0.0012} | None,
     "outliers": {"threshold": 6.0, "mode": "static", "columns": [12, 881]} | None}
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx

from qpass.config import LayerPrecision, PerChannel, PerGroup, QuantSpec
from qpass.state import get_state


def _spec(spec: QuantSpec) -> str:
    g = spec.granularity
    gran = type(g).__name__.replace("Per", "per_").lower()
    if isinstance(g, PerGroup):
        gran += f"{g.size}"
    elif isinstance(g, PerChannel) and g.axis != 0:
        gran += f"(axis={g.axis})"
    return f"{spec.format} {gran}" + ("" if spec.symmetric else " asym") + (
        " dyn" if spec.dynamic else "")


def describe_precision(prec: LayerPrecision) -> str:
    """A one-line summary: ``float``, ``W int4 per_group128``, ``W int8 per_channel | A ...``."""
    if prec.is_float:
        return "float"
    parts = [f"W {_spec(prec.weight)}"] if prec.weight is not None else []
    if prec.activation is not None:
        parts.append(f"A {_spec(prec.activation)}")
    text = " | ".join(parts)
    if prec.outlier_threshold is not None:
        cols = ("run-time columns" if prec.outlier_columns is None
                else f"{len(prec.outlier_columns)} float columns")
        text += f" + LLM.int8() split (|x| > {prec.outlier_threshold:g}, {cols})"
    return text


def _float_weights(prec: LayerPrecision, site: dict[str, Any]) -> int | None:
    """Weight elements the site keeps in float: all of a float site, the outlier columns'
    of a static LLM.int8() split, none otherwise."""
    n = site.get("weights")
    if n is None or prec.is_float:
        return n
    cols = prec.outlier_columns if prec.outlier_mode == "static" else None
    if not cols or not site.get("in_features"):
        return 0
    return n // site["in_features"] * len(cols)


def _outliers(prec: LayerPrecision) -> dict[str, Any] | None:
    if prec.outlier_threshold is None:
        return None
    cols = prec.outlier_columns
    return {"threshold": prec.outlier_threshold, "mode": prec.outlier_mode,
            "columns": None if cols is None else list(cols)}


def precision_report(gm: fx.GraphModule) -> list[dict[str, Any]]:
    """One dict per quantization site of a GraphModule returned by ``qpass.prepare`` (or
    ``calibrate`` / ``convert``); see the module docstring for the keys."""
    state = get_state(gm, "precision_report")
    policies = state.reports.get("policies", {})
    sites = policies.get("sites", {})
    history = policies.get("assigned_by", {})
    ranking = {row["node"]: row for row in policies.get("sensitivity", {}).get("ranking", ())}
    rows = []
    for name, prec in state.precisions.items():
        site = sites.get(name, {})
        sens = ranking.get(name)
        rows.append({
            "node": name, "fqn": state.fqns.get(name, site.get("fqn", "")),
            "op": site.get("op"), "weights": site.get("weights"), "float": prec.is_float,
            "float_weights": _float_weights(prec, site),
            "precision": describe_precision(prec),
            "weight": prec.weight and prec.weight.to_dict(),
            "activation": prec.activation and prec.activation.to_dict(),
            "reason": prec.reason, "assigned_by": list(history.get(name, ())),
            "sensitivity": sens and {"rank": sens["rank"], "score": sens["score"]},
            "outliers": _outliers(prec)})
    return rows
