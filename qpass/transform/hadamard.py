"""The ``hadamard`` pass (as in QuaRot, Ashkboos et al., 2024): rotate a linear's input so
that its outliers spread over all channels before it is quantized.

For a site ``y = x Wᵀ`` and any orthogonal H, ``y = (x H)(W H)ᵀ``. qpass uses the
block-diagonal Walsh-Hadamard matrix with blocks of ``block`` input features (a power of two
that divides K)::

    x_r = block_rotate(x, H_b)    # at run time (qpass.ops): b multiply-adds per value
    W_r = W H                     # folded into the weight once

The float function is kept (up to rounding); the quantizer then sees ``x_r``, whose
heavy-tailed channels are mixed with their block's others. On SmolLM2 the input of
``down_proj`` (``silu(gate) * up``, which no norm or linear can absorb a rotation into) is
where static per-tensor int8 loses its accuracy; with blocks of 128 after SmoothQuant its
per-layer output error drops 3-7x. Run it after SmoothQuant: a rotation between ``up_proj``
and ``down_proj`` would hide the fold SmoothQuant looks for.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx as fx

from qpass import ops
from qpass.capture.fqn import describe
from qpass.passes import PASSES, Pass, PassContext, PassResult
from qpass.quantizable import Site, canonical_weight, fetch_attr, find_sites

log = logging.getLogger(__name__)


def hadamard(n: int) -> torch.Tensor:
    """The normalized Sylvester-Walsh-Hadamard matrix H_n [n, n], float64: H = Hᵀ, H H = I."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Walsh-Hadamard matrix needs a power-of-two size, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def rotate_columns(w: torch.Tensor, block: int) -> torch.Tensor:
    """W [N, K] -> W H with H block-diagonal of ``block``, computed in float64."""
    h = hadamard(block)
    return (w.double().unflatten(1, (w.shape[1] // block, block)) @ h).flatten(1).to(w.dtype)


@PASSES.register("hadamard")
@dataclass(frozen=True)
class HadamardRotate(Pass):
    """``targets``: module-FQN globs of the linears whose input is rotated (Llama's
    ``down_proj`` by default); ``block``: the Hadamard block, a power of two dividing each
    target's input features."""

    targets: tuple[str, ...] = ("*down_proj",)
    block: int = 128

    stage: ClassVar[str] = "float"
    needs_data: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if isinstance(self.targets, str) or not self.targets or not all(
                isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"HadamardRotate.targets={self.targets!r} is not valid; allowed: a "
                             "non-empty tuple of module-FQN globs, e.g. ('*down_proj',)")
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 2 \
                or self.block & (self.block - 1):
            raise ValueError(f"HadamardRotate.block={self.block!r} is not valid; allowed: a "
                             "power of two >= 2 that divides the targets' input features, "
                             "e.g. 128")

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        sites = [s for s in find_sites(gm)
                 if not any(fnmatch.fnmatchcase(s.fqn, p) for p in ctx.recipe.keep_float)]
        for pattern in self.targets:
            if not any(fnmatch.fnmatchcase(s.fqn, pattern) for s in sites):
                warnings.warn(f"qpass hadamard: target {pattern!r} matches no quantized linear; "
                              "check the module FQNs (qpass.precision_report lists them)",
                              stacklevel=2)
        report = [self._rotate(gm, s) for s in sites
                  if any(fnmatch.fnmatchcase(s.fqn, p) for p in self.targets)]
        rotated = [r for r in report if r["rotated"]]
        if rotated:
            gm.graph.lint()
            gm.recompile()
        log.info("qpass hadamard: %d of %d target linears rotated", len(rotated), len(report))
        return PassResult(gm, bool(rotated), {"block": self.block, "sites": report})

    def _rotate(self, gm: fx.GraphModule, site: Site) -> dict[str, Any]:
        w = fetch_attr(gm, str(site.weight_node.target))
        k = canonical_weight(w, site.op).shape[1]
        row: dict[str, Any] = {"fqn": site.fqn, "in_features": k, "rotated": False}
        if k % self.block:
            row["reason"] = f"{k} input features are not a multiple of block {self.block}"
        elif _shared(gm, w):
            row["reason"] = "its weight is shared with another op (tied), which would rotate too"
        if "reason" in row:
            log.warning("qpass hadamard: %s left alone: %s", describe(site.node), row["reason"])
            return row
        with torch.no_grad():
            w_r = rotate_columns(canonical_weight(w, site.op), self.block)
            w.copy_(w_r if site.op.weight_layout == "out_in" else w_r.T)
        site.node.update_arg(site.op.activation_arg, self._online(gm, site))
        row["rotated"] = True
        return row

    def _online(self, gm: fx.GraphModule, site: Site) -> fx.Node:
        """x_r = block_rotate(x, H_b), inserted before the site."""
        x = site.node.args[site.op.activation_arg]
        name = f"qpass_hadamard_{self.block}"
        if not hasattr(gm, name):
            gm.register_buffer(name, hadamard(self.block).float())
        g = gm.graph
        with g.inserting_before(site.node):
            x_r = g.call_function(ops.BLOCK_ROTATE, (x, g.get_attr(name)))
        if "nn_module_stack" in site.node.meta:
            x_r.meta["nn_module_stack"] = site.node.meta["nn_module_stack"]
        if isinstance(x, fx.Node) and "val" in x.meta:
            x_r.meta["val"] = x.meta["val"]  # same shape and dtype as x
        return x_r


def _shared(gm: fx.GraphModule, w: torch.Tensor) -> bool:
    """True when another parameter or buffer name, or a second reader, holds ``w``."""
    names = [n for n, t in {**dict(gm.named_parameters(remove_duplicate=False)),
                            **dict(gm.named_buffers(remove_duplicate=False))}.items()
             if t.data_ptr() == w.data_ptr()]
    readers = [n for n in gm.graph.nodes if n.op == "get_attr" and str(n.target) in names]
    return len(names) > 1 or sum(len(r.users) for r in readers) > 1
