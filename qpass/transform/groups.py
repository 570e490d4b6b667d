"""Scale groups: linears that share one input activation, and where a per-channel scale on
that activation can be folded — found from the graph, never from per-architecture name tables.

A group is an activation X [..., C] and the linears that read it (q/k/v share one group,
gate/up another). Its *fold* says where diag(s)^-1 goes so that the float function is kept:

- ``NormFold``: X is a norm's output times a constant per-channel weight (RMSNorm written as
  pow/mean/rsqrt/mul, as Llama's is) or ``aten.layer_norm`` with weight and bias: divide them by s.
- ``LinearFold``: X comes from an earlier linear through per-channel-linear ops only
  (v_proj -> attention -> o_proj; up_proj -> act(gate) * up -> down_proj): divide that linear's
  output rows by s, mapped to its channels (``channels.channel_map``).
- no fold (``fold is None``): X also feeds something other than the group's linears, or comes
  from an op that mixes channels; ``reason`` says which. SmoothQuant may then insert an explicit
  multiply.

The matchers are a table, tried in order; the first that matches wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx

from qpass.capture.fqn import module_fqn
from qpass.quantizable import Site, fetch_attr
from qpass.transform.channels import channel_map, path_args, real_users

aten = torch.ops.aten
MAX_PATH = 40  # nodes walked back from X looking for a producing linear


@dataclass(frozen=True)
class NormFold:
    kind: str  # "scale_mul" (RMSNorm-style weight multiply) or "layer_norm"
    node: fx.Node
    weight: str  # get_attr target of the per-channel weight
    bias: str | None = None

    @property
    def fqn(self) -> str:
        return module_fqn(self.node)


@dataclass(frozen=True)
class LinearFold:
    site: Site
    channel_map: torch.Tensor  # [C]: X's channel j is fed by the producer's channel map[j]
    path: tuple[fx.Node, ...]

    kind = "linear"

    @property
    def fqn(self) -> str:
        return self.site.fqn


Fold = NormFold | LinearFold


@dataclass(frozen=True)
class ScaleGroup:
    activation: fx.Node  # X: [..., C]
    consumers: tuple[Site, ...]
    fold: Fold | None
    reason: str = ""  # why there is no fold

    @property
    def channels(self) -> int:
        return int(self.activation.meta["val"].shape[-1])


def _const(gm: fx.GraphModule, node: object, numel: int) -> str | None:
    """The get_attr target of ``node`` if it is a 1-D constant of ``numel`` entries used once."""
    if not (isinstance(node, fx.Node) and node.op == "get_attr" and len(node.users) == 1):
        return None
    t = fetch_attr(gm, str(node.target))
    return str(node.target) if t.dim() == 1 and t.numel() == numel else None


def match_scale_mul(gm: fx.GraphModule, x: fx.Node, c: int) -> Fold | None:
    if x.target is not aten.mul.Tensor or len(x.args) != 2:
        return None
    for w, other in (x.args, x.args[::-1]):
        target = _const(gm, w, c)
        if target is not None and isinstance(other, fx.Node):
            return NormFold("scale_mul", x, target)
    return None


def match_layer_norm(gm: fx.GraphModule, x: fx.Node, c: int) -> Fold | None:
    if x.target is not aten.layer_norm.default or len(x.args) < 3:
        return None
    weight = _const(gm, x.args[2], c)
    bias_arg = x.args[3] if len(x.args) > 3 else None
    bias = _const(gm, bias_arg, c) if bias_arg is not None else None
    if weight is None or (bias_arg is not None and bias is None):
        return None
    return NormFold("layer_norm", x, weight, bias)


def match_linear(gm: fx.GraphModule, x: fx.Node, c: int,
                 sites: dict[fx.Node, Site] | None = None) -> Fold | None:
    """Walk back from X through per-channel-linear ops to a linear whose output has no
    other reader; every node on the way must have X's path as its only reader."""
    sites = sites or {}

    def walk(node: fx.Node, path: list[tuple[fx.Node, int]]) -> Fold | None:
        if len(path) > MAX_PATH:
            return None
        for pos in path_args(node):
            src = node.args[pos]
            if not isinstance(src, fx.Node) or real_users(src) != [node]:
                continue
            step = [(node, pos), *path]
            if src in sites:
                cmap = channel_map(src, step, x)
                if cmap is not None:
                    return LinearFold(sites[src], cmap, tuple(n for n, _ in step))
                continue
            found = walk(src, step)
            if found is not None:
                return found
        return None

    return walk(x, [])


FOLD_MATCHERS: tuple[tuple[str, Callable[..., Fold | None]], ...] = (
    ("scale_mul", match_scale_mul),
    ("layer_norm", match_layer_norm),
    ("linear", match_linear),
)


def find_scale_groups(gm: fx.GraphModule, sites: list[Site],
                      all_sites: list[Site] | None = None) -> list[ScaleGroup]:
    """Group ``sites`` by their input activation and find each group's fold.

    ``all_sites``: every weighted op of the graph (producers may be linears that are not
    themselves smoothed); defaults to ``sites``.
    """
    by_x: dict[fx.Node, list[Site]] = {}
    for s in sites:
        by_x.setdefault(s.activation_node, []).append(s)
    producers = {s.node: s for s in (all_sites or sites)}
    groups = []
    for x, members in by_x.items():
        val = x.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        c = int(val.shape[-1])
        readers = {s.node for s in members}
        others = [u for u in real_users(x) if u not in readers]
        if others:
            why = (f"{x.name} also feeds {others[0].format_node()} [module "
                   f"{module_fqn(others[0]) or '<root>'}], which a folded scale would change")
            groups.append(ScaleGroup(x, tuple(members), None, why))
            continue
        fold = None
        for _, matcher in FOLD_MATCHERS:
            fold = (matcher(gm, x, c, producers) if matcher is match_linear
                    else matcher(gm, x, c))
            if fold is not None:
                break
        why = "" if fold else f"{x.format_node()} is not a norm and no linear reaches it " \
                              "through per-channel-linear ops"
        groups.append(ScaleGroup(x, tuple(members), fold, why))
    return groups
