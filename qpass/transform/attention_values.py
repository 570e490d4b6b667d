"""Attention-weighted Hessians for value projections (the idea of BoA, Kim et al., 2025).

GPTQ's layer-wise loss ||X Wᵀ - X Ŵᵀ||² treats the tokens of a linear's output as read one by
one. A value projection's output is not: attention mixes it, o_q = Σ_t a_qt v_t for each query
head, so the error that reaches the next layer is A X Δᵀ, not X Δᵀ. For the rows of one value
head the exact loss is Σ_h ||A_h X Δᵀ||² over the query heads h reading it, whose Hessian is

    H = 2 Σ_h (A_h X)ᵀ (A_h X) / n        (n: the query positions summed)

one per group of value rows (per KV head under grouped-query attention). It matters most for
the attention-sink token that every query reads: on SmolLM2 the plain Hessian lets GPTQ trade
that token's value error for the others', and GPTQ came out worse than round-to-nearest.

``find_value_paths`` finds, from the graph, the sites whose output reaches the value input of
``aten.scaled_dot_product_attention`` through data-moving ops only (view, transpose, the
expand/reshape of repeat_kv), and which attention head reads each output channel.
``value_hessians`` computes the Hessians in the layer-wise walk, from the live query, key and
mask of every calibration batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx

from qpass.quantizable import Site
from qpass.transform.channels import (
    IDENTITY_OPS,
    MOVE_OPS,
    NoChannelMap,
    real_users,
    shape_of,
    step,
)
from qpass.transform.hessian import Hessian

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
MAX_PATH = 12


@dataclass(frozen=True)
class ValuePath:
    """A site whose output channels are attention values: ``heads[i]`` are the query heads
    that read the channels ``rows[i]`` of its output."""

    sdpa: fx.Node
    rows: tuple[torch.Tensor, ...]
    heads: tuple[tuple[int, ...], ...]


def find_value_paths(sites: list[Site]) -> dict[fx.Node, ValuePath]:
    """The value paths of ``sites`` (keyed by the site's node); sites whose output does not
    reach an attention's value through data-moving ops are left out."""
    out = {}
    for s in sites:
        found = _follow(s.node)
        if found is not None:
            layout = _layout(s.node, *found)
            if layout is not None:
                out[s.node] = layout
    return out


def _follow(node: fx.Node) -> tuple[list[fx.Node], fx.Node] | None:
    """The chain of single-reader move ops from ``node`` to an SDPA's value argument."""
    path, cur = [], node
    for _ in range(MAX_PATH):
        users = real_users(cur)
        if len(users) != 1:
            return None
        nxt = users[0]
        if nxt.target is SDPA:
            return (path, nxt) if len(nxt.args) > 2 and nxt.args[2] is cur else None
        moves = nxt.target in MOVE_OPS or nxt.target in IDENTITY_OPS
        if not moves or nxt.args[0] is not cur:
            return None
        path.append(nxt)
        cur = nxt
    return None


def _layout(producer: fx.Node, path: list[fx.Node], sdpa: fx.Node) -> ValuePath | None:
    """Which query heads read each producer channel, from channel and token ids run through
    the path; ``None`` unless the value is [B, H, S, D] with the producer's tokens in order."""
    try:
        shape = shape_of(producer)  # [..., S, N]
        value_shape = shape_of(sdpa.args[2])
        q_heads = shape_of(sdpa.args[0])[1]
        n, tokens = shape[-1], math.prod(shape[:-1])
        chans = torch.arange(n, dtype=torch.float64).expand(shape).contiguous()
        toks = torch.arange(tokens, dtype=torch.float64).reshape(*shape[:-1], 1).expand(
            shape).contiguous()
        for node in path:
            chans, toks = step(node, chans, 0), step(node, toks, 0)
    except (NoChannelMap, RuntimeError, TypeError, IndexError):
        return None
    if tuple(chans.shape) != value_shape or len(value_shape) != 4:
        return None
    b, hv, s, d = value_shape
    if b * s != tokens or not torch.equal(
            toks, torch.arange(tokens, dtype=torch.float64).reshape(b, 1, s, 1).expand(
                value_shape)):
        return None
    per_head = chans[0, :, 0, :]  # [Hv, D]: producer channel of each value channel
    if not torch.equal(chans, per_head[None, :, None, :].expand(value_shape)):
        return None
    gqa = bool(sdpa.kwargs.get("enable_gqa", False))
    if hv != q_heads and not (gqa and q_heads % hv == 0):
        return None
    rep = q_heads // hv
    readers: dict[int, set[int]] = {}
    for head in range(hv):
        for c in per_head[head].long().tolist():
            readers.setdefault(c, set()).update(range(head * rep, (head + 1) * rep))
    if len(readers) != n:
        return None  # some output channel is never read as a value
    groups: dict[tuple[int, ...], list[int]] = {}
    for c, heads in sorted(readers.items()):
        groups.setdefault(tuple(sorted(heads)), []).append(c)
    return ValuePath(sdpa, tuple(torch.tensor(r) for r in groups.values()), tuple(groups))


def attention_probs(q: torch.Tensor, k: torch.Tensor, sdpa: fx.Node,
                    mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) [B, Hq, L, S], as ``aten.scaled_dot_product_attention``
    computes it (is_causal, boolean or additive mask, scale, enable_gqa)."""
    q, k = q.double(), k.double()
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scale = sdpa.kwargs.get("scale")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = (q @ k.transpose(-1, -2)) * scale
    causal = sdpa.kwargs.get("is_causal", sdpa.args[5] if len(sdpa.args) > 5 else False)
    if causal:
        lq, lk = logits.shape[-2:]
        keep = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
        logits = logits.masked_fill(~keep, float("-inf"))
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool \
            else logits + mask.double()
    return torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a fully masked row reads nothing


def value_hessians(path: ValuePath, xs: list[torch.Tensor], qs: list[torch.Tensor],
                   ks: list[torch.Tensor], masks: list[torch.Tensor | None]
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(rows, H) per group of value rows, from each batch's input x [B, S, K], query, key and
    mask; H = 2 Σ (A_h X)ᵀ (A_h X) / n over the group's query heads h."""
    k_in = xs[0].shape[-1]
    hess = [Hessian.empty(k_in) for _ in path.rows]
    for x, q, key, mask in zip(xs, qs, ks, masks, strict=True):
        probs = attention_probs(q, key, path.sdpa, mask)  # [B, Hq, L, S]
        x = x.double().reshape(probs.shape[0], -1, k_in)  # [B, S, K]
        for h, heads in zip(hess, path.heads, strict=True):
            mixed = probs[:, list(heads)] @ x[:, None]  # [B, |heads|, L, K]
            h.update(mixed)
    return [(rows, h.value) for rows, h in zip(path.rows, hess, strict=True)]
