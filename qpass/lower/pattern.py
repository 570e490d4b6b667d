"""Find the quantized linears that ``qpass.convert`` wrote, as data the kernels can read.

The converted graph spells each quantized site as (see ``qpass/convert/convert.py``)::

    x' = dequantize(quantize(x, s_x, z_x))     s_x, z_x: buffers (static) or
                                               choose_qparams_per_token(x) (dynamic)
    W' = dequantize(W_q, s_w, z_w, axis)       W_q: [K, N] buffer
    y  = matmul(x', W') (+ b)                  or mm / addmm(b, x', W') / matmul

A ``QLinear`` holds the pieces: the float input ``x``, how it is quantized (``ActQuant``, or
``None`` for weight-only), the weight as convert stored it, the bias and the nodes to replace.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from qpass import ops
from qpass.capture.fqn import module_fqn
from qpass.convert.weights import QuantizedWeight
from qpass.quantizable import fetch_attr

aten = torch.ops.aten
MATMULS = (aten.matmul.default, aten.mm.default, aten.addmm.default)


@dataclass(frozen=True)
class ActQuant:
    """How a QLinear quantizes its input: per token at run time, or per tensor (static)."""

    format: str
    symmetric: bool
    dynamic: bool
    scale: torch.Tensor | None = None  # static: 0-d
    zero_point: torch.Tensor | None = None


@dataclass(frozen=True)
class OutlierSplit:
    """The float part of a static LLM.int8() split: y += x[..., columns] @ weight.

    The QLinear's quantized part then reads ``x * keep`` (0 at ``columns``)."""

    keep: torch.Tensor  # [K] float, 0 at the outlier columns
    columns: torch.Tensor  # [n] long
    weight: torch.Tensor  # [n, N] float: the outlier rows of W^T, exact


@dataclass(frozen=True)
class QLinear:
    """One quantized linear: y[..., N] = dq(q(x))[..., K] @ dq(W_q)[K, N] (+ bias[N])."""

    name: str  # the matmul node's name
    fqn: str
    x: fx.Node  # the float input, before activation quantization
    act: ActQuant | None  # None: weight-only
    weight: QuantizedWeight  # [K, N] with its qparams, as convert stored it
    bias: fx.Node | None
    output: fx.Node  # the node whose value the pattern produces (the matmul, or its bias add)
    op: str  # "matmul", "mm" or "addmm"
    outliers: OutlierSplit | None = None  # LLM.int8(): set by qpass.lower.llm_int8

    @property
    def in_features(self) -> int:
        return int(self.weight.q.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.weight.q.shape[1])

    @property
    def group_size(self) -> int | None:
        """Input features per weight scale: K for per-channel/per-tensor, g for per-group."""
        s = self.weight.scale
        return self.in_features // int(s.shape[0]) if s.dim() == 2 else self.in_features


def is_call(node: object, target: object) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is target


def buffer_value(gm: fx.GraphModule, node: object) -> torch.Tensor | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        t = fetch_attr(gm, str(node.target))
        return t if isinstance(t, torch.Tensor) else None
    return None


def _weight(gm: fx.GraphModule, w: object) -> QuantizedWeight | None:
    """``dequantize(W_q, s, z, axis, fmt)`` of buffers -> the QuantizedWeight it reads."""
    if not is_call(w, ops.DEQUANTIZE):
        return None
    q, s, z = (buffer_value(gm, a) for a in w.args[:3])
    if q is None or s is None or z is None or q.dim() != 2:
        return None
    return QuantizedWeight(q, s, z, int(w.args[3]), str(w.args[4]))


def _activation(gm: fx.GraphModule, xq: fx.Node) -> tuple[fx.Node, ActQuant | None]:
    """(float input, its quantization) for the matmul input ``xq``."""
    if not is_call(xq, ops.DEQUANTIZE) or not is_call(xq.args[0], ops.QUANTIZE):
        return xq, None
    q = xq.args[0]
    x, s, z, fmt = q.args[0], q.args[1], q.args[2], str(q.args[4])
    if (s, z) != (xq.args[1], xq.args[2]):
        return xq, None
    if is_call(s, operator.getitem) and is_call(s.args[0], ops.CHOOSE_QPARAMS_PER_TOKEN):
        choose = s.args[0]
        if choose.args[0] is not x or not (is_call(z, operator.getitem) and z.args[0] is choose):
            return xq, None
        return x, ActQuant(fmt, bool(choose.args[2]), dynamic=True)
    scale, zp = buffer_value(gm, s), buffer_value(gm, z)
    if scale is None or zp is None or scale.dim() != 0:
        return xq, None  # not a per-tensor static activation: leave it to the reference
    symmetric = bool((zp == 0).all()) or zp.dtype == torch.uint8 and int(zp) == 128
    return x, ActQuant(fmt, symmetric, dynamic=False, scale=scale, zero_point=zp)


def bias_add(gm: fx.GraphModule, y: fx.Node, n: int) -> fx.Node | None:
    """The ``add(y, b)`` after ``y`` when b is a constant [N] vector and y has no other user."""
    if len(y.users) != 1:
        return None
    add = next(iter(y.users))
    if not is_call(add, aten.add.Tensor) or add.args[0] is not y or len(add.args) != 2 \
            or add.kwargs:
        return None
    b = buffer_value(gm, add.args[1])
    return add if b is not None and b.shape == (n,) else None


def match_qlinear(gm: fx.GraphModule, node: fx.Node) -> QLinear | None:
    """The QLinear whose matmul is ``node``, or None when ``node`` is not one."""
    if node.op != "call_function" or node.target not in MATMULS or node.kwargs:
        return None
    op = str(node.target).split(".")[1]
    xq, w, bias = (node.args[1], node.args[2], node.args[0]) if op == "addmm" else (
        node.args[0], node.args[1], None)
    weight = _weight(gm, w)
    if weight is None:
        return None
    x, act = _activation(gm, xq)
    output = node
    if bias is None and (add := bias_add(gm, node, int(weight.q.shape[1]))) is not None:
        bias, output = add.args[1], add
    return QLinear(node.name, module_fqn(node), x, act, weight, bias, output, op)


def find_qlinears(gm: fx.GraphModule) -> list[QLinear]:
    """Every quantized linear of a converted GraphModule, in graph order."""
    return [m for n in gm.graph.nodes if (m := match_qlinear(gm, n)) is not None]
