"""Validator rules every export profile applies: opsets, zero-point types, scales."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from qpass.export.qdq_graph import FP8_TYPES, INT4_TYPES, QDQGraph, type_name
from qpass.export.validate import RULES, Violation, violation

T_INT16 = (5, 4)  # INT16, UINT16


def _needs(g: QDQGraph, node) -> tuple[int, str]:
    qtype = g.quantized_type(node)
    if qtype in INT4_TYPES or qtype in T_INT16:
        return 21, f"{type_name(qtype)} Q/DQ"
    if (g.attr(node, "block_size", 0) or 0) > 0:
        return 21, "blocked scales (block_size)"
    if qtype in FP8_TYPES:
        return 19, f"{type_name(qtype)} Q/DQ"
    scale = g.shape(node.input[1])
    if scale is not None and len(scale) >= 1 and int(np.prod(scale)) > 1:
        return 13, "per-axis scales"
    return 10, "per-tensor Q/DQ"


@RULES.register("qdq.opset")
def opset_rule(g: QDQGraph) -> Iterator[Violation]:
    """Each Q/DQ node's types and scale layout exist at the model's opset."""
    for node in g.qdq_nodes():
        need, what = _needs(g, node)
        if g.opset < need:
            yield violation("qdq.opset", node, f"{what} need opset {need} or newer; the model "
                            f"declares opset {g.opset}. Export with opset={need} or newer")


@RULES.register("qdq.zero_point_type")
def zero_point_type_rule(g: QDQGraph) -> Iterator[Violation]:
    """A DequantizeLinear's input and zero point have the same type."""
    for node in g.qdq_nodes():
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or not node.input[2]:
            continue
        x, zp = g.elem_type(node.input[0]), g.elem_type(node.input[2])
        if x and zp and x != zp:
            yield violation("qdq.zero_point_type", node,
                            f"input {node.input[0]!r} is {type_name(x)} but zero point "
                            f"{node.input[2]!r} is {type_name(zp)}; they must match")


@RULES.register("qdq.scale")
def scale_rule(g: QDQGraph) -> Iterator[Violation]:
    """Constant scales are finite and positive."""
    for node in g.qdq_nodes():
        scale = g.constant(node.input[1])
        if scale is None:
            continue
        s = scale.astype(np.float64)
        if not np.isfinite(s).all() or (s <= 0).any():
            bad = s[~np.isfinite(s) | (s <= 0)].ravel()[:3]
            yield violation("qdq.scale", node, f"scale {node.input[1]!r} holds "
                            f"{', '.join(map(str, bad))}; scales must be finite and > 0")
