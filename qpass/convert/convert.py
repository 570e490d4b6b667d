"""Phase 3: materialize the reference quantized graph.

Each quantized site ``linear(x, W, b)`` becomes::

    x' = dequantize(quantize(x, s_x, z_x))            static activations (per tensor), or
    s_x, z_x = choose_qparams_per_token(x); x' = dequantize(quantize(x, s_x, z_x))   dynamic
    W' = dequantize(W_q, s_w, z_w, axis)              W_q: [K, N] int8 buffer
    y  = matmul(x', W') (+ b)

with qpass's custom Q/DQ ops (ONNX semantics); a site with an LLM.int8() outlier split becomes
int8_part + float_part (``qpass.convert.outliers``). Float weights that no op reads any more are
dropped, observers are removed. The result runs on CPU and is the numerical ground truth.
"""

from __future__ import annotations

import copy
import logging
import operator
from collections.abc import Callable

import torch
import torch.fx as fx

from qpass import ops
from qpass.capture.fqn import describe
from qpass.config import LayerPrecision, QuantSpec
from qpass.convert.outliers import rewrite_outlier_site
from qpass.convert.weights import QuantizedWeight, quantize_weight
from qpass.observe.module import ObserverModule
from qpass.quantizable import WEIGHTED_OPS, canonical_weight, fetch_attr
from qpass.state import get_state

log = logging.getLogger(__name__)
aten = torch.ops.aten
Activation = fx.Node | tuple[fx.Node, fx.Node]  # one dequantized activation, or (sink, rest)
SLICE_END = 2**63 - 1  # aten.slice's "to the end"


class _Builder:
    """Adds buffers and Q/DQ nodes to one GraphModule."""

    def __init__(self, gm: fx.GraphModule,
                 recorded: dict[str, QuantizedWeight] | None = None) -> None:
        self.gm = gm
        self.act_cache: dict[str, Activation] = {}
        self.recorded = recorded or {}  # node name -> integers a pass chose (GPTQ)

    def buffer(self, name: str, t: torch.Tensor) -> fx.Node:
        base = name if name.startswith("qpass_") else "qpass_" + name
        base = base.replace(".", "_")
        name, i = base, 1
        while hasattr(self.gm, name):
            name, i = f"{base}_{i}", i + 1
        self.gm.register_buffer(name, t)
        return self.gm.graph.get_attr(name)

    def call(self, target: object, args: tuple, meta_from: fx.Node) -> fx.Node:
        node = self.gm.graph.call_function(target, args)
        if "nn_module_stack" in meta_from.meta:
            node.meta["nn_module_stack"] = meta_from.meta["nn_module_stack"]
        return node

    def static_activation(self, x: fx.Node, spec: QuantSpec, site: fx.Node,
                          keep: torch.Tensor | None = None) -> Activation:
        """x is an observer node: one Q/DQ pair per observer, shared by its consumers.
        ``keep`` (an LLM.int8() static split's column mask) quantizes x * keep instead.
        A spec with sink tokens gives two dequantized slices, (sink, rest), along axis -2."""
        key = str(x.target)
        if key not in self.act_cache:
            observer = self.gm.get_submodule(key).observer
            scale, zp = observer.qparams(spec)
            if keep is not None:
                with self.gm.graph.inserting_after(x):
                    k = self.buffer(f"{key}_outlier_keep", keep)
                with self.gm.graph.inserting_after(k):
                    x = self.call(aten.mul.Tensor, (x, k), site)
            if not spec.sink_tokens:
                self.act_cache[key] = self._qdq(x, x, f"{key}_", scale, zp, spec, site)
            else:
                n = spec.sink_tokens
                with self.gm.graph.inserting_after(x):
                    head = self.call(aten.slice.Tensor, (x, -2, 0, n), site)
                with self.gm.graph.inserting_after(head):
                    tail = self.call(aten.slice.Tensor, (x, -2, n, SLICE_END), site)
                tail_dq = self._qdq(tail, tail, f"{key}_", scale[1], zp[1], spec, site)
                head_dq = self._qdq(head, tail_dq, f"{key}_sink_", scale[0], zp[0], spec, site)
                self.act_cache[key] = (head_dq, tail_dq)
        return self.act_cache[key]

    def _qdq(self, x: fx.Node, after: fx.Node, prefix: str, scale: torch.Tensor,
             zp: torch.Tensor, spec: QuantSpec, site: fx.Node) -> fx.Node:
        """dequantize(quantize(x)) with constant per-tensor qparams, inserted after ``after``."""
        with self.gm.graph.inserting_after(after):
            s = self.buffer(f"{prefix}scale", scale)
        with self.gm.graph.inserting_after(s):
            z = self.buffer(f"{prefix}zero_point", zp)
        with self.gm.graph.inserting_after(z):
            q = self.call(ops.QUANTIZE, (x, s, z, -1, spec.format), site)
        with self.gm.graph.inserting_after(q):
            return self.call(ops.DEQUANTIZE, (q, s, z, -1, spec.format), site)

    def per_part(self, x: Activation, make: Callable[[fx.Node], fx.Node],
                 site: fx.Node) -> fx.Node:
        """``make(x)``; for (sink, rest) slices, both made and concatenated along axis -2."""
        if isinstance(x, fx.Node):
            return make(x)
        return self.call(aten.cat.default, ([make(x[0]), make(x[1])], -2), site)

    def dynamic_activation(self, x: fx.Node, spec: QuantSpec, site: fx.Node) -> fx.Node:
        qp = self.call(ops.CHOOSE_QPARAMS_PER_TOKEN, (x, spec.format, spec.symmetric), site)
        s = self.call(operator.getitem, (qp, 0), site)
        z = self.call(operator.getitem, (qp, 1), site)
        q = self.call(ops.QUANTIZE, (x, s, z, -1, spec.format), site)
        return self.call(ops.DEQUANTIZE, (q, s, z, -1, spec.format), site)


def _rewrite_site(b: _Builder, node: fx.Node, prec: LayerPrecision, fqn: str) -> str:
    """Replace one site; returns the target of the float weight it no longer reads."""
    op = WEIGHTED_OPS[node.target]
    w_node = node.args[op.weight_arg]
    weight = canonical_weight(fetch_attr(b.gm, str(w_node.target)), op)
    assert prec.weight is not None
    qw = _site_weight(b, node, weight, prec.weight)
    graph = b.gm.graph
    with graph.inserting_before(node):
        x = node.args[op.activation_arg]
        if prec.activation is not None and prec.activation.dynamic:
            x = b.dynamic_activation(x, prec.activation, node)
        elif prec.activation is not None:
            x = b.static_activation(x, prec.activation, node)
        wq = b.buffer(f"{fqn or node.name}.weight_q", qw.q)
        ws = b.buffer(f"{fqn or node.name}.weight_scale", qw.scale)
        wz = b.buffer(f"{fqn or node.name}.weight_zero_point", qw.zero_point)
        w = b.call(ops.DEQUANTIZE, (wq, ws, wz, qw.axis, qw.format), node)  # [K, N]
        y = b.per_part(x, lambda part: _weighted_op(b, node, op, part, w), node)
    y.meta.update({k: v for k, v in node.meta.items() if k not in y.meta})
    node.replace_all_uses_with(y)
    graph.erase_node(node)
    return str(w_node.target)


def _weighted_op(b: _Builder, node: fx.Node, op, x: fx.Node, w: fx.Node) -> fx.Node:
    """``node``'s op on activation ``x`` and the dequantized weight ``w`` [K, N]."""
    args = list(node.args)
    if node.target is aten.linear.default:
        y = b.call(aten.matmul.default, (x, w), node)
        if len(args) > 2 and args[2] is not None:
            y = b.call(aten.add.Tensor, (y, args[2]), node)
        return y
    args[op.activation_arg] = x
    args[op.weight_arg] = w
    return b.call(node.target, tuple(args), node)


def _site_weight(b: _Builder, node: fx.Node, weight: torch.Tensor,
                 spec: QuantSpec) -> QuantizedWeight:
    """The integers a weights pass recorded for this site (GPTQ), else round to nearest."""
    qw = b.recorded.get(node.name)
    if qw is None:
        try:
            return quantize_weight(weight, spec)
        except ValueError as exc:
            raise ValueError(f"cannot quantize the weight of {describe(node)}: {exc}") from exc
    if qw.format != spec.format or not torch.equal(qw.dequantize().T.to(weight.dtype), weight):
        raise ValueError(
            f"the {qw.format} integers a pass recorded for {describe(node)} no longer match its "
            f"weight (spec format {spec.format}): something changed the weight after they were "
            "chosen. Put GPTQ last among the recipe's weights passes")
    return qw


def _drop_observers_and_dead_weights(gm: fx.GraphModule, replaced: set[str]) -> None:
    """Remove observers, and the float weights in ``replaced`` that nothing reads any more."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ObserverModule):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            gm.delete_submodule(node.target)
    gm.graph.eliminate_dead_code()
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    tensors = dict(gm.named_parameters(remove_duplicate=False))
    tensors.update(gm.named_buffers(remove_duplicate=False))
    dead = {id(tensors[name]) for name in replaced - used if name in tensors}
    # a tied weight also lives under its other names (torch.export reads one of them)
    for name, t in tensors.items():
        owner, _, attr = name.rpartition(".")
        if id(t) not in dead or name in used or any(
                owner == c or owner.startswith(f"{c}.") for c in called):
            continue  # still read, or a module the graph still calls reads it internally
        delattr(gm.get_submodule(owner) if owner else gm, attr)


def convert(prepared: fx.GraphModule) -> fx.GraphModule:
    """The reference quantized GraphModule. ``prepared`` is left as it was."""
    state = get_state(prepared, "convert")
    if state.phase == "converted":
        raise ValueError("this GraphModule is already converted; convert a prepared one")
    needs_calibration = any(p.activation is not None and not p.activation.dynamic
                            for p in state.precisions.values())
    if needs_calibration and state.calibrated_batches == 0:
        raise ValueError("the recipe quantizes activations statically, but the model was not "
                         "calibrated: call qpass.calibrate(prepared, batches) before convert")
    gm = copy.deepcopy(prepared)
    state = copy.copy(get_state(gm, "convert"))
    builder = _Builder(gm, state.quantized_weights)
    state.quantized_weights = {}  # stored as buffers below; the converted state keeps none
    nodes = {n.name: n for n in gm.graph.nodes}
    replaced = set()
    with torch.no_grad():
        for name, prec in state.precisions.items():
            if prec.is_float:
                continue
            rewrite = _rewrite_site if prec.outlier_threshold is None else rewrite_outlier_site
            replaced.add(rewrite(builder, nodes[name], prec, state.fqns[name]))
    _drop_observers_and_dead_weights(gm, replaced)
    state.phase = "converted"
    gm.meta["qpass"] = state
    gm.graph.lint()
    gm.recompile()
    log.info("qpass.convert: %d sites quantized", sum(not p.is_float
                                                      for p in state.precisions.values()))
    return gm
