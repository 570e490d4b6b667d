"""Which Hessian each weight is solved against, for GPTQ's rounding and AWQ's searches.

The plain layer-wise loss ||X Δᵀ||² (Hessian 2XᵀX/n) weighs every output token of a linear
alike. Two kinds of linears have outputs that the model does not read that way, and get their
own Hessians, computed in the layer-wise walk from the live values ahead of the site:

- value projections (``attention_values``): attention mixes their output over tokens, so
  each value head's rows get 2 Σ_h (A_h X)ᵀ(A_h X)/n;
- residual writers (o_proj, down_proj: the output's only reader is an add): the next norm
  divides each token's error by the RMS of the residual stream, so token t's xᵀx is weighed by
  1 / mean(r_t²) of the residual after the add (normalized to mean weight 1). On SmolLM2 the
  attention-sink token's activations are far above the others' (in layer 29 its down_proj
  input has norm 939 against a median of 115), and the plain loss spends the rounding budget
  on it.

On SmolLM2-135M at 4-bit g128 the plain Hessian makes GPTQ worse than round-to-nearest; the
two together turn that around (see the README's GPTQ table).
"""

from __future__ import annotations

import logging

import torch
import torch.fx as fx

from qpass.quantizable import Site
from qpass.transform.attention_values import find_value_paths, value_hessians
from qpass.transform.channels import residual_add
from qpass.transform.hessian import Hessian
from qpass.transform.layerwise import LayerwiseWalk

log = logging.getLogger(__name__)
RowHessians = list[tuple[torch.Tensor, torch.Tensor]]  # (rows, H [K, K]) pairs


class SiteHessians:
    def __init__(self, walk: LayerwiseWalk, sites: list[Site], *, attention_values: bool,
                 residual_weighted: bool, owner: str) -> None:
        self.walk, self.owner = walk, owner
        self.values = find_value_paths(sites) if attention_values else {}
        self.residual_weighted = residual_weighted

    def row_hessians(self, site: Site, n: int) -> tuple[RowHessians, str]:
        """(rows, H) pairs for the site's ``n`` output rows that do not use the plain Hessian
        ([] when all do), and the kind, for reports: "attention", "residual" or "plain"."""
        try:
            if site.node in self.values:
                return self._attention(site), "attention"
            weights = self._residual_weights(site)
        except ValueError as exc:  # a value the look-ahead needs was already freed
            log.warning("qpass %s: %s keeps the plain Hessian: %s", self.owner, site.fqn, exc)
            return [], "plain"
        if weights is None:
            return [], "plain"
        h = Hessian.empty(int(site.activation_node.meta["val"].shape[-1]))
        for x, wt in zip(self.walk.values(site.activation_node), weights, strict=True):
            h.update(x, wt)
        mean = float(torch.cat([wt.flatten() for wt in weights]).mean())
        return [(torch.arange(n), h.value / mean)], "residual"

    def _attention(self, site: Site) -> RowHessians:
        path = self.values[site.node]
        sdpa = path.sdpa
        mask = sdpa.kwargs.get("attn_mask", sdpa.args[3] if len(sdpa.args) > 3 else None)
        if isinstance(mask, fx.Node):
            qs, ks, masks = self.walk.peek_many([sdpa.args[0], sdpa.args[1], mask])
        else:
            qs, ks = self.walk.peek_many([sdpa.args[0], sdpa.args[1]])
            masks = [mask] * len(qs)
        return value_hessians(path, self.walk.values(site.activation_node), qs, ks, masks)

    def _residual_weights(self, site: Site) -> list[torch.Tensor] | None:
        """1 / mean(r²) per token of the residual r the site's output is added into
        (computed ahead with the site's current weight), or ``None``."""
        if not self.residual_weighted:
            return None
        add = residual_add(site.node)
        if add is None:
            return None
        return [1.0 / r.double().pow(2).mean(-1).clamp(min=1e-12) for r in self.walk.peek(add)]
