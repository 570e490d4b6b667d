"""Which ATen ops qpass quantizes, and where their activation, weight and bias sit.

A table, not dispatch code: a pass looks a node's target up in ``WEIGHTED_OPS``. A node is a
quantization *site* when its weight argument is a constant (a ``get_attr`` of a 2-D
parameter or buffer); an op between two activations stays float.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from qpass.capture.fqn import op_fqn

aten = torch.ops.aten


@dataclass(frozen=True)
class WeightedOp:
    activation_arg: int
    weight_arg: int
    weight_layout: str  # "out_in": [N, K] as nn.Linear stores it; "in_out": [K, N]
    bias_arg: int | None = None


WEIGHTED_OPS: dict[object, WeightedOp] = {
    aten.linear.default: WeightedOp(0, 1, "out_in", bias_arg=2),
    aten.mm.default: WeightedOp(0, 1, "in_out"),
    aten.addmm.default: WeightedOp(1, 2, "in_out", bias_arg=0),
    aten.matmul.default: WeightedOp(0, 1, "in_out"),
}


@dataclass(frozen=True)
class Site:
    """One quantizable op in a graph."""

    node: fx.Node
    op: WeightedOp
    fqn: str

    @property
    def weight_node(self) -> fx.Node:
        return self.node.args[self.op.weight_arg]

    @property
    def activation_node(self) -> fx.Node:
        return self.node.args[self.op.activation_arg]

    @property
    def op_type(self) -> str:
        return str(self.node.target).split(".")[1] if "." in str(self.node.target) else str(
            self.node.target)


def fetch_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    assert isinstance(obj, torch.Tensor), f"{target} is not a tensor"
    return obj


def find_sites(gm: fx.GraphModule) -> list[Site]:
    sites = []
    for node in gm.graph.nodes:
        op = WEIGHTED_OPS.get(node.target) if node.op == "call_function" else None
        if op is None or len(node.args) <= op.weight_arg:
            continue
        weight = node.args[op.weight_arg]
        if not isinstance(weight, fx.Node) or weight.op != "get_attr":
            continue
        if fetch_attr(gm, str(weight.target)).dim() != 2:
            continue
        sites.append(Site(node, op, op_fqn(node, weight)))
    return sites


def canonical_weight(w: torch.Tensor, op: WeightedOp) -> torch.Tensor:
    """The weight as [out_features, in_features], whatever layout the op takes it in."""
    return w if op.weight_layout == "out_in" else w.T
