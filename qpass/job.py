"""The main job: quantize a built-in model with a recipe, export ONNX, measure accuracy.

Used by ``qpass quantize``; the same code path for causal LMs and encoders: only the
accuracy measure differs (perplexity for causal LMs, output cosine similarity for encoders).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import qpass
from qpass.eval import load_model, wikipedia_token_slices
from qpass.eval.parity import compare
from qpass.eval.similarity import output_similarity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobConfig:
    model: str = "smollm2-135m"
    recipe: str = "w8a8_dynamic"
    calib_windows: int = 8  # at least 2: the first two make the export's example batch
    eval_windows: int = 4
    window: int | None = None  # default: 512 for causal LMs, 128 for encoders
    out: Path = Path("exports")
    threads: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        for name, least in (("calib_windows", 2), ("eval_windows", 1), ("threads", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"JobConfig.{name}={getattr(self, name)} must be >= {least}")
        if self.window is not None and self.window < 2:
            raise ValueError(f"JobConfig.window={self.window} must be >= 2")


@dataclass
class JobResult:
    onnx_path: Path
    metric: str  # "perplexity" or "cosine similarity"
    rows: list[tuple[str, float]] = field(default_factory=list)  # (variant, value)
    parity: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _inputs(ids: torch.Tensor, kind: str) -> tuple[torch.Tensor, ...]:
    return (ids,) if kind == "causal_lm" else (ids, torch.ones_like(ids))


def run_job(cfg: JobConfig) -> JobResult:
    clock = time.perf_counter()
    loaded = load_model(cfg.model)
    window = cfg.window or (512 if loaded.kind == "causal_lm" else 128)
    calib, evals = wikipedia_token_slices(loaded.tokenizer, calib_windows=cfg.calib_windows,
                                          eval_windows=cfg.eval_windows, window=window)
    # two rows: torch.export specializes axes of size 1, and the ONNX file should take any
    # batch and sequence length the model allows
    example = _inputs(calib[:2], loaded.kind)
    dims = loaded.dynamic_shapes
    gm = qpass.capture(loaded.module, example, dynamic_shapes=dims)
    seconds = {"load + capture": time.perf_counter() - clock}
    clock = time.perf_counter()
    batches = [_inputs(calib[i:i + 1], loaded.kind) for i in range(len(calib))]
    qmodel = qpass.quantize(gm, cfg.recipe, batches, example, progress=cfg.progress)
    seconds["quantize"] = time.perf_counter() - clock
    clock = time.perf_counter()
    path = qpass.export_onnx(qmodel, example, cfg.out / f"{cfg.model}-{cfg.recipe}.onnx",
                             dynamic_shapes=dims)
    seconds["export"] = time.perf_counter() - clock
    clock = time.perf_counter()
    result = JobResult(path, "perplexity" if loaded.kind == "causal_lm" else "cosine")
    if loaded.kind == "causal_lm":
        acc = compare(gm, qmodel, evals, threads=cfg.threads, progress=cfg.progress)
        par = compare(qmodel, path, evals, threads=cfg.threads, progress=cfg.progress)
        result.rows = [("FP32 (torch)", acc.reference_ppl), (f"{cfg.recipe} (torch)",
                       acc.candidate_ppl), (f"{cfg.recipe} (ONNX Runtime)", par.candidate_ppl)]
        result.parity = {"max_abs_diff": par.max_abs_diff, "mean_abs_diff": par.mean_abs_diff,
                         "argmax_agreement": par.argmax_agreement}
    else:
        eval_batches = [_inputs(evals[i:i + 1], loaded.kind) for i in range(len(evals))]
        acc = output_similarity(gm, qmodel, eval_batches, threads=cfg.threads)
        par = output_similarity(qmodel, path, eval_batches, threads=cfg.threads)
        result.rows = [(f"{cfg.recipe} (torch) vs FP32", acc.mean_cosine),
                       (f"{cfg.recipe} (ONNX Runtime) vs torch", par.mean_cosine)]
        result.parity = {"max_abs_diff": par.max_abs_diff, "min_cosine": par.min_cosine}
    seconds["evaluate"] = time.perf_counter() - clock
    result.seconds = seconds
    return result
