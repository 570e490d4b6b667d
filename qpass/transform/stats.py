"""Per-channel statistics of chosen activations, gathered in one run over calibration data.

For each watched node: the per-channel min and max over every token of every batch, and a
bounded sample of rows (tokens) for searches that need real inputs. Memory is constant in the
number of batches: ``rows`` rows per node at most.

The sample is stratified: from each batch the rows with the largest |x| always (an LLM's
massive activations sit on a few tokens, e.g. 1 in 512, which a uniform sample of 64 misses 7
times in 8), the rest drawn uniformly from the other rows. Each row carries the number of
rows it stands for (1 for the largest, n_rest / k_rest for the others), so sums weighted by
``sample_weights`` are unbiased estimates of sums over every token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from tqdm.auto import tqdm


@dataclass
class ChannelStats:
    lo: torch.Tensor | None = None  # [C]
    hi: torch.Tensor | None = None  # [C]
    rows: list[torch.Tensor] = field(default_factory=list)  # [r, C] each
    weights: list[torch.Tensor] = field(default_factory=list)  # [r] each: rows each stands for

    @property
    def absmax(self) -> torch.Tensor:
        assert self.lo is not None and self.hi is not None
        return torch.maximum(self.lo.abs(), self.hi.abs())

    @property
    def sample(self) -> torch.Tensor:
        return torch.cat(self.rows)

    @property
    def sample_weights(self) -> torch.Tensor:
        return torch.cat(self.weights)

    def update(self, x: torch.Tensor, take: int, gen: torch.Generator, name: str) -> None:
        x2 = x.detach().float().reshape(-1, x.shape[-1])  # [tokens, C]
        if not torch.isfinite(x2).all():
            raise ValueError(f"activation {name} holds NaN or Inf on the calibration data; "
                             "check the model and the batches before smoothing")
        lo, hi = x2.amin(dim=0), x2.amax(dim=0)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        if take > 0:
            idx, w = _stratified(x2, take, gen)
            self.rows.append(x2[idx].clone())
            self.weights.append(w)


TOP_FRACTION = 8  # 1/8 of each batch's sample: its largest rows


def _stratified(x2: torch.Tensor, take: int, gen: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices and weights: the ``take // 8`` (at least 1) rows of largest |x|, then
    uniform draws from the rest, each weighted by how many rows it represents."""
    n = x2.shape[0]
    if take >= n:
        return torch.arange(n), torch.ones(n)
    top = max(take // TOP_FRACTION, 1)
    first = torch.topk(x2.abs().amax(dim=1), top).indices
    others = torch.ones(n, dtype=torch.bool)
    others[first] = False
    rest = others.nonzero().squeeze(1)
    drawn = rest[torch.randperm(rest.numel(), generator=gen)[:take - top]]
    weights = torch.cat([torch.ones(top), torch.full((drawn.numel(),),
                                                     rest.numel() / max(drawn.numel(), 1))])
    return torch.cat([first, drawn]), weights


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, stats: dict[str, ChannelStats], take: int) -> None:
        super().__init__(gm)
        self.stats, self.take = stats, take
        self.gen = torch.Generator().manual_seed(0)

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.stats:
            self.stats[n.name].update(out, self.take, self.gen, n.name)
        return out


def collect_channel_stats(gm: fx.GraphModule, nodes: list[fx.Node], batches: list[tuple],
                          rows: int = 512, progress: bool = True,
                          desc: str = "qpass channel stats") -> dict[str, ChannelStats]:
    """Run ``batches`` through ``gm`` and return the statistics of ``nodes`` by node name."""
    stats = {n.name: ChannelStats() for n in nodes}
    take = math.ceil(rows / max(len(batches), 1)) if rows else 0
    recorder = _Recorder(gm, stats, take)
    with torch.no_grad():
        for batch in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
            recorder.run(*batch)
    return stats
