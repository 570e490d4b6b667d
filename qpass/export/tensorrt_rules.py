"""Validator rules of the ``tensorrt`` profile (see ``qpass.export.tensorrt_profile``)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx

from qpass.export.qdq_graph import WEIGHTED_OPS, QDQGraph, node_label, type_name
from qpass.export.validate import RULES, Violation, violation

T = onnx.TensorProto
TYPES = {T.INT8: "int8", T.FLOAT8E4M3FN: "fp8 e4m3", T.INT4: "int4 (weights only)"}
# QOperator-style and run-time-quantization ops that TensorRT's ONNX parser does not take
FOREIGN_OPS = ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul",
               "QLinearConv", "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
               "MatMulNBits")


@RULES.register("tensorrt.ops")
def ops_rule(g: QDQGraph) -> Iterator[Violation]:
    """No integer-arithmetic ops and no ONNX Runtime contrib ops: TensorRT takes Q/DQ only."""
    for node in g.nodes:
        if node.op_type in FOREIGN_OPS or node.domain == "com.microsoft":
            yield violation("tensorrt.ops", node, f"{node.domain or 'ai.onnx'}::{node.op_type} "
                            "is not part of TensorRT's explicit quantization (Q/DQ around float "
                            "ops); export with profile='tensorrt' to get plain Q/DQ")


@RULES.register("tensorrt.types")
def types_rule(g: QDQGraph) -> Iterator[Violation]:
    """int8 and fp8 e4m3 everywhere, int4 only on constant weights."""
    for node in g.qdq_nodes():
        qtype = g.quantized_type(node)
        weight = node.op_type == "DequantizeLinear" and g.is_constant(node.input[0])
        if qtype not in TYPES:
            yield violation("tensorrt.types", node, f"{type_name(qtype)} Q/DQ: TensorRT takes "
                            f"{', '.join(TYPES.values())}; use symmetric int8 instead of uint8")
        elif qtype == T.INT4 and not weight:
            yield violation("tensorrt.types", node, "int4 on an activation: TensorRT runs int4 "
                            "for constant weights only (weight-only quantization)")


@RULES.register("tensorrt.symmetric")
def symmetric_rule(g: QDQGraph) -> Iterator[Violation]:
    """Zero points are 0."""
    for node in g.qdq_nodes():
        zp = g.constant(g.input(node, 2))
        if zp is None:
            continue
        values = zp.astype(np.float64)
        if (values != 0).any():
            shown = ", ".join(str(v) for v in np.unique(values[values != 0])[:3])
            yield violation("tensorrt.symmetric", node, f"zero point {node.input[2]!r} is "
                            f"{shown}: TensorRT needs symmetric quantization (zero point 0)")


@RULES.register("tensorrt.constant_qparams")
def constant_qparams_rule(g: QDQGraph) -> Iterator[Violation]:
    """Scales and zero points are constants (no quantization parameters computed at run time)."""
    for node in g.qdq_nodes():
        for i, what in ((1, "scale"), (2, "zero point")):
            name = g.input(node, i)
            if name and not g.is_constant(name):
                yield violation("tensorrt.constant_qparams", node, f"{what} {name!r} is computed "
                                "at run time (dynamic quantization); TensorRT needs constant "
                                "scales: calibrate static activation ranges")


@RULES.register("tensorrt.activation_scales")
def activation_scales_rule(g: QDQGraph) -> Iterator[Violation]:
    """Activations (QuantizeLinear inputs) are quantized per tensor."""
    for node in g.qdq_nodes():
        shape = g.shape(node.input[1])
        if node.op_type == "QuantizeLinear" and shape and int(np.prod(shape)) > 1:
            yield violation("tensorrt.activation_scales", node, f"activation scale of shape "
                            f"{list(shape)}: TensorRT quantizes activations per tensor")


def _weight_axes(op: onnx.NodeProto, rank: int) -> tuple[int, int]:
    """(output-channel axis, reduction axis) of the weight input of a weighted op."""
    if op.op_type == "Gemm":
        return (0, 1) if QDQGraph.attr(op, "transB", 0) else (1, 0)
    if op.op_type == "Conv":
        return 0, 1
    if op.op_type == "ConvTranspose":
        return 1, 0
    return rank - 1, rank - 2  # MatMul: [..., K, N]


def weighted_consumers(g: QDQGraph, dq: onnx.NodeProto) -> list[onnx.NodeProto]:
    return [c for c in g.consumers.get(dq.output[0], [])
            if c.op_type in WEIGHTED_OPS and len(c.input) > 1 and c.input[1] == dq.output[0]]


@RULES.register("tensorrt.weight_axis")
def weight_axis_rule(g: QDQGraph) -> Iterator[Violation]:
    """Weight scales per tensor, per output channel, or (int4) per block along the reduction."""
    for node in g.qdq_nodes():
        w = g.shape(node.input[0]) if node.op_type == "DequantizeLinear" else None
        scale = g.shape(node.input[1])
        if w is None or not scale or int(np.prod(scale)) <= 1:
            continue
        block = g.attr(node, "block_size", 0) or 0
        axis = g.attr(node, "axis", 1) % len(w)
        for op in weighted_consumers(g, node):
            out_axis, k_axis = _weight_axes(op, len(w))
            want, what = (k_axis, "blocks along the reduction axis") if block else (
                out_axis, "the output-channel axis")
            if axis != want:
                yield violation("tensorrt.weight_axis", node, f"weight scales of {node_label(op)}"
                                f" run along axis {axis}; TensorRT needs {what} (axis {want} "
                                f"of this {list(w)} weight)")


@RULES.register("tensorrt.q_then_dq")
def q_then_dq_rule(g: QDQGraph) -> Iterator[Violation]:
    """Every QuantizeLinear feeds DequantizeLinear nodes only."""
    for node in g.qdq_nodes():
        if node.op_type != "QuantizeLinear":
            continue
        others = [c for c in g.consumers.get(node.output[0], [])
                  if c.op_type != "DequantizeLinear"]
        if others or node.output[0] in g.graph_outputs:
            who = node_label(others[0]) if others else "a graph output"
            yield violation("tensorrt.q_then_dq", node, f"its quantized output goes to {who}; "
                            "TensorRT needs every QuantizeLinear followed by DequantizeLinear")


def _weighted_producer(g: QDQGraph, name: str) -> onnx.NodeProto | None:
    """The weighted op (with a constant or dequantized-constant weight) that makes ``name``,
    directly or through a bias Add."""
    node = g.producer.get(name)
    if node is not None and node.op_type == "Add":
        rest = [i for i in node.input if not g.is_constant(i)]
        node = g.producer.get(rest[0]) if len(rest) == 1 else None
    if node is None or node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
        return None
    w = node.input[1]
    return node if g.is_constant(w) or g.weight_dq(w) is not None else None


@RULES.register("tensorrt.output_qdq")
def output_qdq_rule(g: QDQGraph) -> Iterator[Violation]:
    """Q/DQ sit on the inputs of weighted ops, not on their outputs."""
    for node in g.qdq_nodes():
        op = _weighted_producer(g, node.input[0]) if node.op_type == "QuantizeLinear" else None
        if op is not None:
            yield violation("tensorrt.output_qdq", node, f"quantizes the output of "
                            f"{node_label(op)}; TensorRT wants Q/DQ on the inputs of weighted "
                            "ops: remove this pair, and quantize the input of the weighted op "
                            "that consumes the value instead")
