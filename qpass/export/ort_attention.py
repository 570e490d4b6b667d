"""Cheaper attention for ONNX Runtime CPU: the softmax NaN guards of exported SDPA, removed
without changing a single output value.

``torch.onnx`` exports ``scaled_dot_product_attention`` with a boolean mask as

    bias = Where(mask, 0, -inf)                      # [B|1, H|1, L, S]
    p = Softmax(scores + bias)                       # [B, H, L, S]
    p = Where(IsNaN(p), 0, p)                        # the guard: fully masked rows -> 0
    out = MatMul(p, V)                               # [B, H, L, D]

The guard costs two passes over the largest tensor of the model ([B, H, L, S], every layer).
It only ever fires on NaN, and finite scores give NaN in one case: a row whose mask is all
False when the fill is -inf (softmax of all -inf). So:

- fill finite (torch's exporter writes the lowest float32, -3.4e38): a fully masked row gets a
  uniform softmax, never NaN, and the guard goes with no replacement;
- fill -inf: fully masked rows are found once per mask instead, and zeroed after the MatMul,
  which is ``S / D`` times smaller than the softmax:

      keep = ReduceMax(Cast(mask, float), -1) > 0      # [.., L, 1]: the row sees something
      bias = Where(mask OR NOT keep, 0, -inf)          # fully masked rows see everything
      out = Where(keep, MatMul(Softmax(scores + bias), V), 0)

- a constant bias (a mask the exporter folded) where every row keeps a finite entry: the
  guard goes, as in the first case.

Every output is the same, bit for bit, while the scores are finite and below 1e31 in size.
Past that (an overflow upstream) the guard used to turn NaN entries into zeros; now they
propagate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)
T = onnx.TensorProto


@dataclass(frozen=True)
class _Guard:
    """One guarded attention: the nodes that change and the tensors they read."""

    add: onnx.NodeProto  # scores + bias
    bias_input: int  # which input of ``add`` is the bias
    mask: str | None  # the boolean mask (None: a constant bias with no fully masked row)
    neg_inf: str | None  # the fill constant of the bias Where
    zero: str | None  # the 0 constant of the bias Where (reused for the output Where)
    guard: onnx.NodeProto  # Where(IsNaN(p), 0, p)
    isnan: onnx.NodeProto
    matmul: onnx.NodeProto  # MatMul(p, V)


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = {t.name: t for t in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = node.attribute[0].t

    def value(self, name: str) -> np.ndarray | None:
        t = self.constants.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def only_user(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        outputs = {o.name for o in self.graph.output}
        return users[0] if len(users) == 1 and name not in outputs else None

    def is_scalar(self, name: str, want: float) -> bool:
        v = self.value(name)
        return v is not None and v.size == 1 and float(v.reshape(())) == want


def _match(g: _Graph, softmax: onnx.NodeProto) -> _Guard | None:
    p = softmax.output[0]
    users = g.consumers.get(p, [])
    isnan = next((u for u in users if u.op_type == "IsNaN"), None)
    if isnan is None or len(users) != 2:
        return None
    guard = g.only_user(isnan.output[0])
    if (guard is None or guard.op_type != "Where" or guard.input[0] != isnan.output[0]
            or guard.input[2] != p or not g.is_scalar(guard.input[1], 0.0)):
        return None
    matmul = g.only_user(guard.output[0])
    add = g.producer.get(softmax.input[0])
    if matmul is None or matmul.op_type != "MatMul" or matmul.input[0] != guard.output[0]:
        return None
    if add is None or add.op_type != "Add" or g.only_user(add.output[0]) is not softmax:
        return None
    for i, name in enumerate(add.input):
        bias = g.producer.get(name)
        fill = None if bias is None or bias.op_type != "Where" else g.value(bias.input[2])
        if (fill is not None and fill.size == 1 and float(fill.reshape(())) < 0
                and g.is_scalar(bias.input[1], 0.0)):
            return _Guard(add, i, bias.input[0], bias.input[2], bias.input[1], guard, isnan,
                          matmul)
        if _never_empty(g.value(name)):
            return _Guard(add, i, None, None, None, guard, isnan, matmul)
    return None


def _never_empty(bias: np.ndarray | None) -> bool:
    """A constant additive mask that leaves every row something finite to attend to."""
    if bias is None or bias.ndim == 0 or np.isnan(bias).any():
        return False
    return not np.isneginf(bias).all(axis=-1).any()


def _axis_last(g: _Graph) -> str:
    name = "qpass_attn_axis_last"
    if name not in g.constants:
        t = numpy_helper.from_array(np.array([-1], np.int64), name)
        g.graph.initializer.append(t)
        g.constants[name] = t
    return name


def _row_fix(g: _Graph, m: _Guard, made: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """(keep, bias) for ``m.mask``, made once per mask and shared by every layer."""
    if m.mask is None or m.zero is None or m.neg_inf is None:
        raise ValueError("qpass ort attention: a -inf bias Where without its mask")
    if m.mask in made:
        return made[m.mask]
    p = f"qpass_attn_{len(made)}"
    nodes = [
        helper.make_node("Cast", [m.mask], [f"{p}_maskf"], to=T.FLOAT),
        helper.make_node("ReduceMax", [f"{p}_maskf", _axis_last(g)], [f"{p}_rowmax"],
                         keepdims=1),
        helper.make_node("Cast", [f"{p}_rowmax"], [f"{p}_keep"], to=T.BOOL),
        helper.make_node("Not", [f"{p}_keep"], [f"{p}_empty"]),
        helper.make_node("Or", [m.mask, f"{p}_empty"], [f"{p}_mask"]),
        helper.make_node("Where", [f"{p}_mask", m.zero, m.neg_inf], [f"{p}_bias"]),
    ]
    for node in nodes:
        node.name = f"{node.output[0]}_node"
    made[m.mask] = (f"{p}_keep", f"{p}_bias")
    _insert_before(g.graph, m.add, nodes)
    return made[m.mask]


def _insert_before(graph: onnx.GraphProto, anchor: onnx.NodeProto,
                   nodes: list[onnx.NodeProto]) -> None:
    """Insert ``nodes`` just before ``anchor``, keeping the graph topologically sorted."""
    at = _index(graph, anchor)
    for k, node in enumerate(nodes):
        graph.node.insert(at + k, node)


def _index(graph: onnx.GraphProto, node: onnx.NodeProto) -> int:
    """Position of ``node`` in ``graph`` (found by its first output, which is unique)."""
    return next(i for i, n in enumerate(graph.node) if n.output[0] == node.output[0])


def remove_softmax_nan_guards(model: onnx.ModelProto) -> int:
    """Rewrite every guarded SDPA softmax of ``model`` in place (see the module doc).

    Returns how many guards were removed.
    """
    g = _Graph(model)
    found = [m for n in list(g.graph.node) if n.op_type == "Softmax"
             for m in [_match(g, n)] if m is not None]
    made: dict[str, tuple[str, str]] = {}
    for m in found:
        m.matmul.input[0] = m.guard.input[2]
        g.graph.node.remove(m.guard)
        g.graph.node.remove(m.isnan)
        if m.neg_inf is not None and g.is_scalar(m.neg_inf, -np.inf):
            _zero_empty_rows(g, m, made)
    _drop_dead(model)
    log.debug("ort attention: %d softmax NaN guards removed", len(found))
    return len(found)


def _zero_empty_rows(g: _Graph, m: _Guard, made: dict[str, tuple[str, str]]) -> None:
    """With a -inf bias, give fully masked rows a 0 bias and zero their output instead."""
    keep, bias = _row_fix(g, m, made)
    m.add.input[m.bias_input] = bias
    out = m.matmul.output[0]
    raw = f"{out}_unguarded"
    m.matmul.output[0] = raw
    where = helper.make_node("Where", [keep, raw, m.zero], [out], name=f"{raw}_where")
    g.graph.node.insert(_index(g.graph, m.matmul) + 1, where)


def _drop_dead(model: onnx.ModelProto) -> None:
    """Remove nodes (the old bias Wheres) whose outputs nothing reads."""
    graph = model.graph
    while True:
        used = {name for node in graph.node for name in node.input}
        used |= {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)
