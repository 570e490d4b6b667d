"""FX rewrites that give ONNX Runtime's CPU kernels the form they run fastest, before export.

``fuse_dynamic_matmuls``: a per-token dynamic int8 activation feeding a MatMul with int8
weights becomes one ``qpass::dynamic_quant_matmul`` node with uint8 weights (values and zero
points + 128, bit-exact). Its ONNX translation computes the per-token scale with Reduce ops,
quantizes the rows with one QuantizeLinear and runs ONNX Runtime's ``MatMulIntegerToFloat``
(uint8 x uint8: exact on every x86 CPU; the weight scale applied in the same pass), with the
per-token scale applied after. Left as a Q/DQ chain, ONNX Runtime cannot fuse a run-time
per-token scale and falls back to dequantizing the weights and a float MatMul on every call.
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.fx as fx

from qpass import ops
from qpass.quantizable import fetch_attr

log = logging.getLogger(__name__)
MATMULS = (torch.ops.aten.matmul.default, torch.ops.aten.mm.default)


def _chain(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(x, weight dequantize) when ``node`` = matmul(dq(q(x, per-token)), dq(W_int8))."""
    if node.op != "call_function" or node.target not in MATMULS:
        return None
    xd, wd = node.args[0], node.args[1]
    if not all(isinstance(n, fx.Node) and n.target == ops.DEQUANTIZE for n in (xd, wd)):
        return None
    q = xd.args[0]
    if not isinstance(q, fx.Node) or q.target != ops.QUANTIZE or q.args[4] != "int8":
        return None
    scale = q.args[1]
    qp = scale.args[0] if scale.target == operator.getitem else None
    if qp is None or qp.target != ops.CHOOSE_QPARAMS_PER_TOKEN or qp.args[2] is not True:
        return None
    if not all(isinstance(a, fx.Node) and a.op == "get_attr" for a in wd.args[:3]):
        return None
    if wd.args[4] != "int8" or len(xd.users) != 1:
        return None
    return qp.args[0], wd


def _uint8_buffer(gm: fx.GraphModule, node: fx.Node, name: str) -> fx.Node:
    t = fetch_attr(gm, str(node.target))
    target = f"{node.target}_u8"
    if not hasattr(gm, target):
        gm.register_buffer(target, (t.to(torch.int16) + 128).to(torch.uint8))
    with gm.graph.inserting_before(node):
        return gm.graph.get_attr(target)


def fuse_dynamic_matmuls(gm: fx.GraphModule) -> int:
    """Rewrite in place; returns how many MatMuls were fused."""
    fused = 0
    for node in list(gm.graph.nodes):
        found = _chain(node)
        if found is None:
            continue
        x, wd = found
        wq, ws, wz = wd.args[:3]
        if torch.any(fetch_attr(gm, str(wz.target)) != 0):
            continue  # asymmetric weights: keep the Q/DQ chain
        wq_u8, wz_u8 = _uint8_buffer(gm, wq, "q"), _uint8_buffer(gm, wz, "zp")
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(
                ops.DYNAMIC_QUANT_MATMUL, (x, wq_u8, ws, wz_u8, wd.args[3], "uint8"))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        fused += 1
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    log.debug("ort lowering: %d dynamic int8 MatMuls fused", fused)
    return fused
