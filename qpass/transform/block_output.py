"""Where AWQ measures a scale's error: the output of the block a group of linears feeds.

The error of one linear's own output (``awq_search.output_error``) weighs every output
channel and token alike. What the model reads is further on: q_proj and k_proj outputs go
through the softmax, gate_proj through the activation and the product with up_proj. AutoAWQ
measures a group's scales on the output of the module that holds it (``module2inspect``: the
attention block for q/k/v, the MLP for gate/up). qpass finds that point from the graph: the
output of the one quantized linear that every path from the group's outputs reaches first
(q/k/v → RoPE → attention → o_proj; gate/up → act(gate)·up → down_proj). Groups whose output
is added into the residual stream (o_proj, down_proj), or whose paths reach several linears
or the graph's output (a returned KV cache), keep their own output's error.
"""

from __future__ import annotations

import torch.fx as fx

from qpass.quantizable import Site
from qpass.transform.channels import residual_add


def block_output(consumers: list[Site], sites: list[Site]) -> fx.Node | None:
    """The node whose output measures the group ``consumers``' error, or ``None``."""
    if any(residual_add(c.node) is not None for c in consumers):
        return None
    stops = {s.node for s in sites}
    reached: set[fx.Node] = set()
    seen: set[fx.Node] = set()
    stack = [c.node for c in consumers]
    while stack:
        for user in stack.pop().users:
            if user in seen:
                continue
            seen.add(user)
            if user.op == "output":
                return None
            if user in stops:
                reached.add(user)
            else:
                stack.append(user)
    return reached.pop() if len(reached) == 1 else None
