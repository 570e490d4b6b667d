"""Which module an op node came from, as a fully qualified name ("model.layers.3.mlp.up_proj")."""

from __future__ import annotations

import torch.fx as fx

STACK_KEY = "nn_module_stack"


def module_fqn(node: fx.Node) -> str:
    """FQN of the innermost module whose forward ran this node ("" for the root)."""
    stack = node.meta.get(STACK_KEY) or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path)


def module_type(node: fx.Node) -> str:
    stack = node.meta.get(STACK_KEY) or {}
    if not stack:
        return ""
    kind = list(stack.values())[-1][1]
    return kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}"


def op_fqn(node: fx.Node, weight: fx.Node | None = None) -> str:
    """FQN for a weighted op: its module, or, for a functional call in the root's forward,
    the module that owns its weight (``F.linear(x, self.head.weight)`` -> "head")."""
    fqn = module_fqn(node)
    if fqn or weight is None or weight.op != "get_attr":
        return fqn
    owner, _, _ = str(weight.target).rpartition(".")
    return owner


def describe(node: fx.Node) -> str:
    """A node for error messages: its FX form and its module."""
    fqn = module_fqn(node) or "<root>"
    return f"{node.format_node()}  [module {fqn}]"
