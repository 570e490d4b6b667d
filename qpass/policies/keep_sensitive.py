"""``keep_sensitive``: the layers that quantization hurts most by construction stay float.

- **embeddings**: a site whose weight an ``aten.embedding`` also reads (a tied ``lm_head``,
  as SmolLM2's is), or whose FQN matches ``*embed*``;
- **the output head**: a site whose result reaches a graph output through shape-only ops
  (view, reshape, slice, copy), or whose FQN is ``lm_head`` / ``*.lm_head``;
- any layer named in ``layers`` (module-FQN globs).

"Float" is the graph's float type: FP32 in the reference graph that runs on CPU. Running those
layers in FP16 on a GPU is the lowering's job (``lower(cuda)``), not a precision: the policy
only says "do not quantize".
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx

from qpass.config import LayerPrecision
from qpass.policy import POLICIES, Policy, PolicyContext
from qpass.quantizable import Site

aten = torch.ops.aten
SHAPE_OPS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
             aten.slice.Tensor, aten.clone.default, aten.contiguous.default,
             aten.alias.default, aten._to_copy.default, aten.to.dtype, aten.squeeze.dim,
             aten.unsqueeze.default, "getitem"}
HEAD_NAMES = ("lm_head", "*.lm_head")


def _reaches_output(node: fx.Node, depth: int = 8) -> bool:
    """True if ``node``'s value flows to the graph's output through shape-only ops."""
    for user in node.users:
        if user.op == "output":
            return True
        target = "getitem" if getattr(user.target, "__name__", "") == "getitem" else user.target
        if depth and user.op == "call_function" and target in SHAPE_OPS and _reaches_output(
                user, depth - 1):
            return True
    return False


def _embedding_weights(gm: fx.GraphModule) -> set[str]:
    return {str(n.args[0].target) for n in gm.graph.nodes
            if n.op == "call_function" and n.target == aten.embedding.default
            and isinstance(n.args[0], fx.Node) and n.args[0].op == "get_attr"}


@POLICIES.register("keep_sensitive")
@dataclass(frozen=True)
class KeepSensitive(Policy):
    """Keep embeddings, the output head and the ``layers`` globs in float."""

    layers: tuple[str, ...] = ()
    embeddings: bool = True
    head: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.layers, str) or not all(isinstance(p, str) and p for p in self.layers):
            raise ValueError(f"KeepSensitive.layers={self.layers!r} is not valid; allowed: a "
                             "tuple of module-FQN globs such as ('*.layers.0.*',)")

    def _why(self, site: Site, tied: set[str]) -> str | None:
        if self.embeddings and (str(site.weight_node.target) in tied
                                or fnmatch.fnmatchcase(site.fqn, "*embed*")):
            return "an embedding (or tied to one)"
        if self.head and (_reaches_output(site.node)
                          or any(fnmatch.fnmatchcase(site.fqn, p) for p in HEAD_NAMES)):
            return "the output head"
        hit = next((p for p in self.layers if fnmatch.fnmatchcase(site.fqn, p)), None)
        return None if hit is None else f"named by {hit!r}"

    def assign(self, sites: list[Site], ctx: PolicyContext) -> dict[str, LayerPrecision]:
        tied = _embedding_weights(ctx.gm)
        for pattern in self.layers:
            if not any(fnmatch.fnmatchcase(s.fqn, pattern) for s in sites):
                warnings.warn(f"qpass keep_sensitive policy: layers pattern {pattern!r} matched "
                              f"no quantizable op of the {len(sites)} in the graph; check it "
                              "against the module FQNs", UserWarning, stacklevel=2)
        out = {}
        for s in sites:
            why = self._why(s, tied)
            if why is not None:
                out[s.node.name] = LayerPrecision(reason=f"keep_sensitive: {why}")
        ctx.report["keep_sensitive"] = {out_name: p.reason for out_name, p in out.items()}
        return out
