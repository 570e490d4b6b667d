"""Parity of two runs of a causal LM: the torch reference against its ONNX export."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from qpass.eval.perplexity import as_windows, logits_fn, window_nll


@dataclass(frozen=True)
class Parity:
    """How closely ``candidate`` reproduces ``reference``'s logits, on the same windows."""

    reference_ppl: float
    candidate_ppl: float
    max_abs_diff: float
    mean_abs_diff: float
    argmax_agreement: float  # fraction of positions whose top-1 token is the same
    positions: int

    @property
    def ppl_rel_diff(self) -> float:
        return abs(self.candidate_ppl - self.reference_ppl) / self.reference_ppl


def compare(
    reference: nn.Module | str | Path,
    candidate: nn.Module | str | Path,
    token_ids: torch.Tensor,
    window: int = 512,
    *,
    threads: int = 2,
    progress: bool = False,
) -> Parity:
    """Run both models on every window once; perplexity of each, and logit differences."""
    windows = as_windows(token_ids, window)
    runs = [logits_fn(reference, threads), logits_fn(candidate, threads)]
    nll, count = [0.0, 0.0], 0
    max_abs, sum_abs, agree, positions = 0.0, 0.0, 0, 0
    for ids in tqdm(windows, desc="parity", unit="window", disable=not progress):
        ref, cand = (run(ids[None]) for run in runs)
        for i, logits in enumerate((ref, cand)):
            nll[i] += window_nll(logits, ids)[0]
        count += ids.numel() - 1
        diff = (ref.float() - cand.float()).abs()  # [1, T, V]
        max_abs = max(max_abs, float(diff.max()))
        sum_abs += float(diff.double().sum())
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        positions += ids.numel()
    return Parity(
        reference_ppl=math.exp(nll[0] / count),
        candidate_ppl=math.exp(nll[1] / count),
        max_abs_diff=max_abs,
        mean_abs_diff=sum_abs / (positions * ref.shape[-1]),
        argmax_agreement=agree / positions,
        positions=positions,
    )


def perturbed(gm: torch.fx.GraphModule, rel: float = 2.0**-23) -> torch.fx.GraphModule:
    """A copy of ``gm`` whose first floating-point activation is scaled by ``1 + rel``.

    With ``rel`` = one float32 ulp this is the smallest change to the model's input that float
    arithmetic can make. Comparing a model with its perturbed copy measures the parity floor:
    how far two bit-different but equally valid float implementations (torch vs ONNX Runtime
    kernels, say) must be expected to drift apart on this model.
    """
    import copy

    gm = copy.deepcopy(gm)
    graph = gm.graph
    first = next((n for n in graph.nodes if n.op == "call_function"
                  and isinstance(n.meta.get("val"), torch.Tensor)
                  and n.meta["val"].is_floating_point()), None)
    if first is None:
        raise ValueError("perturbed() needs a captured graph with shape metadata (torch.export)")
    with graph.inserting_after(first):
        scaled = graph.call_function(torch.ops.aten.mul.Tensor, (first, 1.0 + rel))
    first.replace_all_uses_with(scaled)
    scaled.update_arg(0, first)
    graph.lint()
    gm.recompile()
    return gm
