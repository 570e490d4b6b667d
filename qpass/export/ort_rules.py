"""Validator rules of the ``ort`` profile: what ONNX Runtime CPU refuses, or runs slowly or
inexactly (see ``qpass.export.profiles.OrtProfile`` and ``qpass.export.ort_profile``)."""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from qpass.export.qdq_graph import FP8_TYPES, INT4_TYPES, QDQGraph, node_label, type_name
from qpass.export.validate import RULES, Violation, violation

T = onnx.TensorProto
MATMULS = ("MatMul", "Gemm")


def _dq_inputs(g: QDQGraph, node: onnx.NodeProto) -> list[onnx.NodeProto | None]:
    return [g.producer.get(i) if g.producer.get(i) is not None
            and g.producer[i].op_type == "DequantizeLinear" else None for i in node.input[:2]]


@RULES.register("ort.fp8_matmul")
def fp8_matmul_rule(g: QDQGraph) -> Iterator[Violation]:
    """No MatMul between two float8 DequantizeLinear outputs: ONNX Runtime 1.31 fuses it into
    MatMulIntegerToFloat, which has no float8 kernel, and the session fails to load."""
    for node in g.nodes:
        dqs = _dq_inputs(g, node) if node.op_type in MATMULS else []
        if len(dqs) == 2 and all(dqs) and any(g.quantized_type(d) in FP8_TYPES for d in dqs):
            yield violation("ort.fp8_matmul", node, "both inputs come from float8 "
                            "DequantizeLinear; ONNX Runtime's CPU optimizer turns this into "
                            "MatMulIntegerToFloat and cannot load it. Export with profile='ort' "
                            "(weights as Cast * scale)")


@RULES.register("ort.relu_q")
def relu_q_rule(g: QDQGraph) -> Iterator[Violation]:
    """No Relu in front of a QuantizeLinear with a constant zero point other than int8/uint8:
    ONNX Runtime 1.31 removes such a Relu as if the quantized range started at zero, which is
    wrong for float8 (and int16, int4) types."""
    for node in g.qdq_nodes():
        zp = g.input(node, 2)
        relu = g.producer.get(node.input[0])
        if node.op_type != "QuantizeLinear" or not zp or relu is None or relu.op_type != "Relu":
            continue
        if g.is_constant(zp) and g.elem_type(zp) not in (T.INT8, T.UINT8) and len(
                g.consumers.get(relu.output[0], [])) == 1:
            yield violation("ort.relu_q", node, f"{node_label(relu)} feeds this "
                            f"{type_name(g.elem_type(zp))} QuantizeLinear; ONNX Runtime drops "
                            "the Relu here and computes something else. Export with "
                            "profile='ort' (float8 Q/DQ without zero point)")


@RULES.register("ort.u8s8")
def u8s8_rule(g: QDQGraph) -> Iterator[Violation]:
    """uint8 activations times full-range int8 weights: ORT's U8S8 kernels saturate on x86
    without VNNI (pairs of products summed in int16)."""
    for node in g.nodes:
        dqs = _dq_inputs(g, node) if node.op_type in MATMULS else []
        if len(dqs) != 2 or not all(dqs):
            continue
        a, b = (g.quantized_type(d) for d in dqs)
        if a == T.UINT8 and b == T.INT8:
            yield violation("ort.u8s8", node, "uint8 activations x int8 weights run on ONNX "
                            "Runtime's U8S8 kernels, which saturate on x86 CPUs without VNNI "
                            "unless the weights are 7-bit (reduce_range); qpass's ort profile "
                            "stores uint8 weights for the exact U8U8 kernels", "warning")


@RULES.register("ort.weight_layout")
def weight_layout_rule(g: QDQGraph) -> Iterator[Violation]:
    """Dequantized weights reach MatMul input B directly, as [K, N] with per-column scales,
    so ONNX Runtime fuses them instead of dequantizing (and transposing) on every run."""
    for node in g.qdq_nodes():
        if node.op_type != "DequantizeLinear" or not g.is_constant(node.input[0]):
            continue
        for user in g.consumers.get(node.output[0], []):
            if user.op_type in ("Transpose", "Reshape", "Cast"):
                yield violation("ort.weight_layout", node, f"the dequantized weight goes "
                                f"through {node_label(user)} before its MatMul: ONNX Runtime "
                                "cannot fuse it and dequantizes it on every run; store the "
                                "weight as [K, N]", "warning")
        scale = g.shape(node.input[1])
        w = g.shape(node.input[0])
        if (w and len(w) == 2 and scale and len(scale) == 1 and scale[0] > 1
                and (g.attr(node, "axis", 1) % 2) != 1):
            yield violation("ort.weight_layout", node, "per-row scales on a [K, N] weight "
                            "(axis 0): ONNX Runtime's fused kernels take one scale per output "
                            "column (axis 1)", "warning")


@RULES.register("ort.nbits_block")
def nbits_block_rule(g: QDQGraph) -> Iterator[Violation]:
    """Blocked int4 weights that ONNX Runtime can turn into MatMulNBits: block along axis 0
    (K), block size a power of two >= 16."""
    for node in g.qdq_nodes():
        block = g.attr(node, "block_size", 0) or 0
        if node.op_type != "DequantizeLinear" or block <= 0:
            continue
        if g.quantized_type(node) in INT4_TYPES and (
                block < 16 or block & (block - 1) or g.attr(node, "axis", 1) != 0):
            yield violation("ort.nbits_block", node, f"{type_name(g.quantized_type(node))} "
                            f"blocks of {block} along axis {g.attr(node, 'axis', 1)}: ONNX "
                            "Runtime fuses blocks along axis 0 of size 16, 32, 64, ... into "
                            "MatMulNBits; this one is dequantized on every run", "warning")
