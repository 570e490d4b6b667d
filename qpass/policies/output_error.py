"""How much quantizing one site alone changes the model's output, for every site in one go.

Quantizing site i alone changes its output by δ_i = Q_i(x_i) - x_i W_iᵀ ([..., N], from
``simulate.simulated_matmul``) and the model's output y by about J_i δ_i, J_i the Jacobian of y
with respect to the site's output. The score is that change relative to the output,

    score_i = ||J_i δ_i||² / ||y||²,

estimated without forming J_i (Hutchinson): for a Gaussian probe r, E[(rᵀ J_i δ_i)²] =
||J_i δ_i||², and rᵀ J_i is the gradient of rᵀy with respect to the site's output, which one
backward pass gives for all sites at once. So a forward pass plus ``probes`` backward passes
replaces one forward pass per site (211 for SmolLM2, whose captured graph also fixes the
sequence length, so the one-at-a-time measure cannot be made cheaper with shorter inputs).
The estimate is first order (exact for small δ) and its relative spread is sqrt(2 / probes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves
from tqdm.auto import tqdm

from qpass.config import LayerPrecision
from qpass.policies.simulate import dequantized_weight, simulated_matmul
from qpass.quantizable import Site, canonical_weight


class _Linearized(fx.Interpreter):
    """Runs the float graph with autograd on; every site's output gets a gradient hook that
    accumulates (gradient · δ)² into ``sums``."""

    def __init__(self, gm: fx.GraphModule, sites: list[Site],
                 precisions: dict[str, LayerPrecision]) -> None:
        super().__init__(gm)
        self.sites = {s.node.name: s for s in sites}
        self.precisions = precisions
        self.w_dq: dict[str, torch.Tensor] = {}
        self.sums = {name: 0.0 for name in self.sites}
        self.scale = 1.0  # 1 / (probes * ||y||^2 * batches), set before each backward

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        site = self.sites.get(n.name)
        if site is None or not isinstance(out, torch.Tensor):
            return out
        args, _ = self.fetch_args_kwargs_from_env(n)
        x = args[site.op.activation_arg].detach()
        w = canonical_weight(args[site.op.weight_arg], site.op).detach()
        prec = self.precisions[n.name]
        with torch.no_grad():
            if n.name not in self.w_dq:
                self.w_dq[n.name] = dequantized_weight(w, prec)
            delta = simulated_matmul(x, w, prec, self.w_dq[n.name]) - x.float() @ w.float().T
        if not out.requires_grad:
            out = out.detach().requires_grad_()
        out.register_hook(self._hook(n.name, delta))
        return out

    def _hook(self, name: str, delta: torch.Tensor) -> Callable[[torch.Tensor], None]:
        def accumulate(grad: torch.Tensor) -> None:
            self.sums[name] += float((grad.float() * delta).sum()) ** 2 * self.scale
        return accumulate


def output_error_scores(gm: fx.GraphModule, sites: list[Site],
                        precisions: dict[str, LayerPrecision], batches: list[tuple[Any, ...]],
                        *, probes: int = 8, seed: int = 0,
                        progress: bool = False) -> dict[str, float]:
    """node name -> estimated relative output error of quantizing that site alone."""
    interpreter = _Linearized(gm, sites, precisions)
    generator = torch.Generator().manual_seed(seed)
    frozen = [(p, p.requires_grad) for p in gm.parameters()]
    bar = tqdm(total=len(batches) * (probes + 1), desc="qpass sensitivity", unit="pass",
               disable=not progress)
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for batch in batches:
            with torch.enable_grad():
                outs = [t for t in tree_leaves(interpreter.run(*batch))
                        if isinstance(t, torch.Tensor) and t.requires_grad]
                bar.update()
                energy = sum(float(t.detach().float().pow(2).sum()) for t in outs)
                interpreter.scale = 1.0 / (probes * max(energy, 1e-30) * len(batches))
                for i in range(probes):
                    r = [torch.randn(t.shape, generator=generator).to(t) for t in outs]
                    torch.autograd.backward(outs, r, retain_graph=i < probes - 1)
                    bar.update()
            del outs
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        bar.close()
    return interpreter.sums
