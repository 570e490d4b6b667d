"""Output similarity of two runs of a model with any inputs (encoders: hidden states)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qpass.eval.ort import ort_session

Runner = nn.Module | str | Path


@dataclass(frozen=True)
class Similarity:
    mean_cosine: float  # mean over positions of cos(reference[..., :], candidate[..., :])
    min_cosine: float
    max_abs_diff: float


def _runner(model: Runner, threads: int):
    if isinstance(model, nn.Module):
        def run(*args: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(*args)
        return run
    session = ort_session(model, threads=threads)
    names = [i.name for i in session.get_inputs()]

    def run_onnx(*args: torch.Tensor) -> torch.Tensor:
        feed = {n: a.numpy() for n, a in zip(names, args, strict=True)}
        return torch.from_numpy(np.asarray(session.run(None, feed)[0]))
    return run_onnx


def output_similarity(reference: Runner, candidate: Runner,
                      batches: Sequence[tuple[torch.Tensor, ...]], *,
                      threads: int = 2) -> Similarity:
    """Cosine similarity of the two models' outputs along the last axis, position by position."""
    if not batches:
        raise ValueError("output_similarity needs at least one batch of inputs")
    ref_run, cand_run = _runner(reference, threads), _runner(candidate, threads)
    cosines, max_abs = [], 0.0
    for args in batches:
        a, b = ref_run(*args).float(), cand_run(*args).float()
        cosines.append(F.cosine_similarity(a, b, dim=-1).flatten())
        max_abs = max(max_abs, float((a - b).abs().max()))
    cos = torch.cat(cosines)
    return Similarity(float(cos.mean()), float(cos.min()), max_abs)
