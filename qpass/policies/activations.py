"""Run calibration batches through the float graph and show each site its input activation.

Data-driven policies (``llm_int8``, ``sensitivity``) read activations with an ``fx.Interpreter``
instead of inserting nodes: the graph the recipe goes on to quantize is never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
from tqdm.auto import tqdm

from qpass.quantizable import Site, canonical_weight

SiteHook = Callable[[Site, torch.Tensor, torch.Tensor], None]  # (site, x [..., K], W [N, K])


class SiteInputs(fx.Interpreter):
    """Calls ``hook(site, x, weight)`` just before each site runs; then runs it as usual."""

    def __init__(self, gm: fx.GraphModule, sites: list[Site], hook: SiteHook) -> None:
        super().__init__(gm)
        self.sites = {s.node.name: s for s in sites}
        self.hook = hook

    def run_node(self, n: fx.Node) -> Any:
        site = self.sites.get(n.name)
        if site is not None:
            args, _ = self.fetch_args_kwargs_from_env(n)
            self.hook(site, args[site.op.activation_arg],
                      canonical_weight(args[site.op.weight_arg], site.op))
        return super().run_node(n)


def run_batches(gm: fx.GraphModule, sites: list[Site], batches: Iterable[tuple[Any, ...]],
                hook: SiteHook, *, progress: bool = False, desc: str = "qpass policy") -> int:
    """Run ``batches`` through ``gm`` with ``hook`` on every site; returns the batch count."""
    interpreter = SiteInputs(gm, sites, hook)
    batches = list(batches)
    with torch.no_grad():
        for batch in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
            interpreter.run(*batch)
    return len(batches)


def column_absmax(gm: fx.GraphModule, sites: list[Site], batches: Iterable[tuple[Any, ...]],
                  *, progress: bool = False) -> dict[str, torch.Tensor]:
    """node name -> [K]: the largest |x| each input column of each site saw over ``batches``."""
    out: dict[str, torch.Tensor] = {}

    def hook(site: Site, x: torch.Tensor, w: torch.Tensor) -> None:
        amax = x.detach().reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
        prev = out.get(site.node.name)
        out[site.node.name] = amax if prev is None else torch.maximum(prev, amax)

    run_batches(gm, sites, batches, hook, progress=progress, desc="qpass llm_int8 columns")
    return out
