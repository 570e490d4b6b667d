"""A read-only view of an ONNX graph for QDQ checks: producers, consumers, constants, types.

Works on any ONNX model (qpass's exports, ONNX Runtime's ``quantize_static`` output, models
written by hand with ``onnx.helper``): constants are initializers or ``Constant`` nodes, and a
tensor's element type comes from an initializer, a graph input/output or ``value_info``, or,
for a QuantizeLinear output, from its zero point (or ``output_dtype``, uint8 by default).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import onnx
from onnx import numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# ops whose second input is a weight, and the weight axis that indexes output channels
WEIGHTED_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
T = onnx.TensorProto
FP8_TYPES = (T.FLOAT8E4M3FN, T.FLOAT8E4M3FNUZ, T.FLOAT8E5M2, T.FLOAT8E5M2FNUZ)
INT4_TYPES = (T.INT4, T.UINT4)


def type_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type) if elem_type else "unknown"


def node_label(node: onnx.NodeProto) -> str:
    """``'name' (OpType)``: how violations and errors name a node."""
    return f"{node.name or '<unnamed>'!r} ({node.op_type})"


class QDQGraph:
    """Lookups over one (main) graph. Nothing is copied or modified."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.nodes = list(self.graph.node)
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
        self.graph_outputs = {o.name for o in self.graph.output}
        self.declared_types = {i.name: i.type.tensor_type.elem_type for i in (
            *self.graph.input, *self.graph.value_info, *self.graph.output)}

    @cached_property
    def opset(self) -> int:
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")),
                    0)

    def qdq_nodes(self) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if n.op_type in QDQ_OPS and n.domain in ("", "ai.onnx")]

    @staticmethod
    def attr(node: onnx.NodeProto, name: str, default: int | float | None = None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    @staticmethod
    def input(node: onnx.NodeProto, i: int) -> str:
        return node.input[i] if len(node.input) > i else ""

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant node), else None."""
        if not name:
            return None
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            value = self.attr(node, "value")
            return None if value is None else numpy_helper.to_array(value)
        return None

    def is_constant(self, name: str) -> bool:
        if name in self.initializers:
            return True
        node = self.producer.get(name)
        return node is not None and node.op_type == "Constant"

    def shape(self, name: str) -> tuple[int, ...] | None:
        if name in self.initializers:
            return tuple(self.initializers[name].dims)
        value = self.constant(name)
        return None if value is None else tuple(value.shape)

    def elem_type(self, name: str) -> int:
        """The element type of tensor ``name``; 0 when the graph does not say."""
        if name in self.initializers:
            return self.initializers[name].data_type
        node = self.producer.get(name)
        if node is not None and node.op_type == "QuantizeLinear":
            return self.quantized_type(node)
        if node is not None and node.op_type == "Constant":
            value = self.attr(node, "value")
            return value.data_type if value is not None else 0
        return self.declared_types.get(name, 0)

    def quantized_type(self, node: onnx.NodeProto) -> int:
        """The integer/fp8 type of a Q or DQ node: its zero point's, else what ONNX implies."""
        zp = self.input(node, 2)
        if zp:
            return self.elem_type(zp)
        if node.op_type == "DequantizeLinear":
            return self.elem_type(node.input[0])
        return int(self.attr(node, "output_dtype", 0) or T.UINT8)

    def weight_dq(self, name: str) -> onnx.NodeProto | None:
        """The DequantizeLinear of a constant that produces ``name``, if that is what it is."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        return node if self.is_constant(node.input[0]) else None
