"""Bring a symbolic_trace graph to the ATen ops qpass's passes look for.

``torch.export`` already yields ``aten.linear`` and friends. A symbolically traced graph holds
``call_module`` nodes for ``nn.Linear`` and torch-level functions (``F.linear``,
``torch.matmul``); this rewrites those to the same ATen ops, with positional arguments,
and records the module FQN in ``node.meta["nn_module_stack"]`` as torch.export does.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from qpass.capture.fqn import STACK_KEY

aten = torch.ops.aten

# torch-level callable -> (ATen op, positional argument names in order)
FUNCTION_TO_ATEN = {
    F.linear: (aten.linear.default, ("input", "weight", "bias")),
    torch.matmul: (aten.matmul.default, ("input", "other")),
    operator.matmul: (aten.matmul.default, ("input", "other")),
    torch.mm: (aten.mm.default, ("input", "mat2")),
    torch.addmm: (aten.addmm.default, ("input", "mat1", "mat2")),
}


def _positional(node: fx.Node, names: tuple[str, ...]) -> tuple:
    args = list(node.args)
    for name in names[len(args):]:
        if name in node.kwargs:
            args.append(node.kwargs[name])
        else:
            break
    extra = set(node.kwargs) - set(names)
    if extra:
        raise ValueError(f"cannot normalize {node.format_node()}: unexpected kwargs {extra}")
    while args and args[-1] is None:
        args.pop()
    return tuple(args)


def _linear_module(gm: fx.GraphModule, node: fx.Node) -> None:
    prefix = str(node.target)
    with gm.graph.inserting_before(node):
        weight = gm.graph.get_attr(f"{prefix}.weight")
        args = (node.args[0], weight)
        if gm.get_submodule(prefix).bias is not None:
            args = (*args, gm.graph.get_attr(f"{prefix}.bias"))
        linear = gm.graph.call_function(aten.linear.default, args)
    linear.meta = dict(node.meta)
    linear.meta[STACK_KEY] = dict(node.meta.get(STACK_KEY) or {prefix: (prefix, torch.nn.Linear)})
    node.replace_all_uses_with(linear)
    gm.graph.erase_node(node)


def normalize_traced(gm: fx.GraphModule) -> fx.GraphModule:
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            if type(gm.get_submodule(str(node.target))) is torch.nn.Linear:
                _linear_module(gm, node)
        elif node.op == "call_function" and node.target in FUNCTION_TO_ATEN:
            op, names = FUNCTION_TO_ATEN[node.target]
            node.args, node.kwargs = _positional(node, names), {}
            node.target = op
    gm.graph.lint()
    gm.recompile()
    return gm
