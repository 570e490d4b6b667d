"""Which input channel of a linear comes from which output channel of an earlier linear.

SmoothQuant may fold a per-channel scale into a producing linear only when the path from its
output to the consumer's input is per-channel linear: a scale on producer channel c reaches
the consumer as the same scale on every channel fed by c. The ops that qualify are a table;
the channel mapping is computed by running the path on a tensor of channel ids.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

aten = torch.ops.aten

# ops whose first argument is the path: data moves but is not mixed across channels
MOVE_OPS = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.transpose.int,
    aten.permute.default, aten.unsqueeze.default, aten.expand.default, aten.squeeze.dim,
    aten.flatten.using_ints, aten.unflatten.int,
}
# ops that leave values as they are (in eval mode)
IDENTITY_OPS = {
    aten.clone.default, aten.contiguous.default, aten.to.dtype, aten.alias.default,
    aten.dropout.default, aten.detach.default,
}
IGNORED_USERS = {aten._assert_tensor_metadata.default}


def path_args(node: fx.Node) -> tuple[int, ...]:
    """Positions of ``node``'s arguments through which a per-channel scale passes unchanged
    (up to moving channels): the table of per-channel-linear ops."""
    t = node.target
    if t in MOVE_OPS or t in IDENTITY_OPS:
        return (0,)
    if t is aten.scaled_dot_product_attention.default:
        return (2,)  # softmax(q k^T) v: scaling v's last axis scales the output's, per head
    if t is aten.mul.Tensor:  # elementwise: a scale on one factor scales the product
        return tuple(i for i, a in enumerate(node.args[:2]) if isinstance(a, fx.Node))
    return ()


def real_users(node: fx.Node) -> list[fx.Node]:
    return [u for u in node.users if u.target not in IGNORED_USERS]


def residual_add(node: fx.Node) -> fx.Node | None:
    """The add that is the only reader of ``node`` (a linear writing into the residual
    stream: o_proj, down_proj), or ``None``."""
    users = real_users(node)
    if len(users) == 1 and users[0].target is torch.ops.aten.add.Tensor:
        return users[0]
    return None


def _concrete(arg: Any) -> Any:
    """An argument with SymInt nodes replaced by the example value they were traced with."""
    if isinstance(arg, torch.SymInt):
        if arg.node.hint is None:
            raise NoChannelMap(f"size {arg} has no example value")
        return int(arg.node.hint)
    if isinstance(arg, fx.Node):
        val = arg.meta.get("val")
        if isinstance(val, torch.SymInt):
            hint = val.node.hint
            if hint is None:
                raise NoChannelMap(f"{arg.name} has no example value")
            return int(hint)
        if isinstance(val, int):
            return val
        raise NoChannelMap(f"argument {arg.name} is not a size")
    if isinstance(arg, (list, tuple)):
        return type(arg)(_concrete(a) for a in arg)
    return arg


class NoChannelMap(Exception):
    pass


def shape_of(node: fx.Node) -> tuple[int, ...]:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise NoChannelMap(f"{node.name} has no example tensor")
    return tuple(_concrete(list(val.shape)))


def step(node: fx.Node, ids: torch.Tensor, pos: int) -> torch.Tensor:
    t = node.target
    if t in IDENTITY_OPS:
        return ids
    if t in MOVE_OPS:
        rest = [_concrete(a) for a in node.args[1:]]
        return t(ids, *rest)
    if t is aten.mul.Tensor:
        if tuple(ids.shape) != shape_of(node):
            raise NoChannelMap("the path operand of a mul is broadcast")
        return ids
    if t is aten.scaled_dot_product_attention.default and pos == 2:
        q_shape = shape_of(node.args[0])
        return ids[..., :1, :].expand(*q_shape[:-1], ids.shape[-1])
    raise NoChannelMap(f"{node.format_node()} is not per-channel linear")


def channel_map(producer: fx.Node, path: list[tuple[fx.Node, int]],
                x: fx.Node) -> torch.Tensor | None:
    """For each channel j of ``x``'s last axis, the output channel of ``producer`` that feeds
    it; ``None`` when the path mixes channels or the shapes are unknown.

    ``path``: the nodes from ``producer``'s first user up to ``x``, each with the position of
    the argument through which the path enters it.
    """
    try:
        shape = shape_of(producer)
        ids = torch.arange(shape[-1], dtype=torch.float64).expand(shape)
        for node, pos in path:
            ids = step(node, ids, pos)
        if tuple(ids.shape) != shape_of(x):
            return None
    except (NoChannelMap, RuntimeError, TypeError):
        return None
    rows = ids.reshape(-1, ids.shape[-1])
    if not torch.equal(rows, rows[:1].expand_as(rows)):
        return None  # one consumer channel is fed by different producer channels
    return rows[0].long()

