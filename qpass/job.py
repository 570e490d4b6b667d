"""The main job: quantize a model with a recipe, save it, export ONNX, measure, report.

Used by ``qpass quantize`` (and, without export, ``qpass report``); the same code path for
causal LMs and encoders: only the accuracy measure differs (perplexity for causal LMs, output
cosine similarity for encoders). Every phase is timed in ``JobResult.seconds``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import qpass
from qpass.config import Recipe
from qpass.eval import LoadedModel, load_model, text_file_token_slices, wikipedia_token_slices
from qpass.eval.parity import compare
from qpass.eval.similarity import output_similarity
from qpass.recipes import resolve_recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobConfig:
    model: str = "smollm2-135m"
    recipe: str | Recipe = "w8a8_dynamic"
    calib_windows: int = 8  # at least 2: the first two make the export's example batch
    eval_windows: int = 4
    window: int | None = None  # default: 512 for causal LMs, 128 for encoders
    out: Path = Path("exports")
    threads: int = 2
    progress: bool = True
    calib_text: Path | None = None  # default: the built-in Wikipedia calibration half
    eval_text: Path | None = None  # default: the built-in Wikipedia evaluation half
    onnx: bool = True
    save: bool = True
    report: bool = True
    report_windows: int = 1  # calibration windows the report's per-layer statistics use

    def __post_init__(self) -> None:
        for name, least in (("calib_windows", 2), ("eval_windows", 1), ("threads", 1),
                            ("report_windows", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"JobConfig.{name}={getattr(self, name)} must be >= {least}")
        if self.window is not None and self.window < 2:
            raise ValueError(f"JobConfig.window={self.window} must be >= 2")
        if self.report_windows > self.calib_windows:
            raise ValueError(f"JobConfig.report_windows={self.report_windows} must be <= "
                             f"calib_windows={self.calib_windows}")


@dataclass
class JobResult:
    stem: str  # "<model>-<recipe>": the name of every output
    metric: str  # "perplexity" or "cosine"
    rows: list[tuple[str, float]] = field(default_factory=list)  # (variant, value)
    parity: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)  # onnx, saved, report, recipe


def token_slices(tokenizer: Any, calib_text: Path | None, eval_text: Path | None,
                 calib_windows: int, eval_windows: int,
                 window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(calib [n, window], eval [m, window]): from the files given, else the built-in text."""
    for what, f in (("calibration", calib_text), ("evaluation", eval_text)):
        if f is not None and not Path(f).is_file():
            raise FileNotFoundError(f"the {what} text file {str(f)!r} does not exist or is not "
                                    "a file")
    if calib_text is None or eval_text is None:
        calib, evals = wikipedia_token_slices(tokenizer, calib_windows=calib_windows,
                                              eval_windows=eval_windows, window=window)
    if calib_text is not None:
        calib = text_file_token_slices(calib_text, tokenizer, windows=calib_windows,
                                       window=window)
    if eval_text is not None:
        evals = text_file_token_slices(eval_text, tokenizer, windows=eval_windows, window=window)
    return calib, evals


@contextlib.contextmanager
def phase(name: str, seconds: dict[str, float], progress: bool = False) -> Iterator[None]:
    """Time a phase into ``seconds[name]``; with ``progress``, a bar ticks the elapsed time
    (for phases that report nothing themselves, such as ONNX export)."""
    start, stop, bar = time.perf_counter(), threading.Event(), None
    if progress and sys.stderr.isatty():  # a ticking bar would flood a log file
        from tqdm.auto import tqdm

        bar = tqdm(total=None, desc=name, bar_format="{desc}: {elapsed}")
        threading.Thread(target=_tick, args=(bar, stop), daemon=True).start()
    try:
        yield
    finally:
        stop.set()
        if bar is not None:
            bar.close()
        seconds[name] = time.perf_counter() - start
        log.info("%s: %.1f s", name, seconds[name])


def _tick(bar: Any, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        bar.refresh()


def model_inputs(ids: torch.Tensor, kind: str) -> tuple[torch.Tensor, ...]:
    return (ids,) if kind == "causal_lm" else (ids, torch.ones_like(ids))


def capture_model(loaded: LoadedModel, calib: torch.Tensor) -> tuple[Any, tuple]:
    """(float GraphModule, example inputs) with dynamic batch and sequence axes."""
    # two rows: torch.export specializes axes of size 1, and the ONNX file should take any
    # batch and sequence length the model allows
    example = model_inputs(calib[:2], loaded.kind)
    return qpass.capture(loaded.module, example, dynamic_shapes=loaded.dynamic_shapes), example


def quantize_phases(gm: Any, kind: str, recipe: Recipe, calib: torch.Tensor, example: tuple,
                    progress: bool) -> tuple[Any, Any]:
    """(prepared-and-calibrated GraphModule, converted model)."""
    batches = [model_inputs(calib[i:i + 1], kind) for i in range(len(calib))]
    prepared = qpass.prepare(gm, recipe, example, calib_data=batches, progress=progress)
    if prepared.meta["qpass"].observers:
        qpass.calibrate(prepared, batches, progress=progress)
    return prepared, qpass.convert(prepared)


def _evaluate(cfg: JobConfig, loaded: LoadedModel, gm: Any, qmodel: Any, onnx_path: Path | None,
              evals: torch.Tensor, result: JobResult, name: str) -> None:
    if loaded.kind == "causal_lm":
        acc = compare(gm, qmodel, evals, threads=cfg.threads, progress=cfg.progress)
        result.rows = [("FP32 (torch)", acc.reference_ppl), (f"{name} (torch)", acc.candidate_ppl)]
        if onnx_path is not None:
            par = compare(qmodel, onnx_path, evals, threads=cfg.threads, progress=cfg.progress)
            result.rows.append((f"{name} (ONNX Runtime)", par.candidate_ppl))
            result.parity = {"max_abs_diff": par.max_abs_diff, "mean_abs_diff": par.mean_abs_diff,
                             "argmax_agreement": par.argmax_agreement}
        return
    batches = [model_inputs(evals[i:i + 1], loaded.kind) for i in range(len(evals))]
    acc = output_similarity(gm, qmodel, batches, threads=cfg.threads)
    result.rows = [(f"{name} (torch) vs FP32", acc.mean_cosine)]
    if onnx_path is not None:
        par = output_similarity(qmodel, onnx_path, batches, threads=cfg.threads)
        result.rows.append((f"{name} (ONNX Runtime) vs torch", par.mean_cosine))
        result.parity = {"max_abs_diff": par.max_abs_diff, "min_cosine": par.min_cosine}


def run_job(cfg: JobConfig, loader: Callable[[], LoadedModel] | None = None) -> JobResult:
    """Quantize ``cfg.model`` (loaded by ``loader`` if given), then save, export, evaluate
    and report as ``cfg`` asks; outputs go to ``cfg.out`` named ``<model>-<recipe>``."""
    from qpass.recipe_files import dump_recipe
    from qpass.save import save

    recipe = resolve_recipe(cfg.recipe)
    seconds: dict[str, float] = {}
    with phase("load model and text", seconds):
        loaded = loader() if loader is not None else load_model(cfg.model)
        window = cfg.window or (512 if loaded.kind == "causal_lm" else 128)
        calib, evals = token_slices(loaded.tokenizer, cfg.calib_text, cfg.eval_text,
                                    cfg.calib_windows, cfg.eval_windows, window)
    stem = f"{loaded.name}-{recipe.name}"
    result = JobResult(stem, "perplexity" if loaded.kind == "causal_lm" else "cosine",
                       seconds=seconds)
    result.paths["recipe"] = dump_recipe(recipe, cfg.out / f"{stem}.recipe.yaml")
    with phase("capture", seconds):
        gm, example = capture_model(loaded, calib)
    with phase("quantize", seconds):
        prepared, qmodel = quantize_phases(gm, loaded.kind, recipe, calib, example, cfg.progress)
    if cfg.save:
        with phase("save", seconds):
            result.paths["saved"] = save(qmodel, cfg.out / stem)
    if cfg.onnx:
        with phase("export ONNX", seconds, cfg.progress):
            result.paths["onnx"] = qpass.export_onnx(qmodel, example, cfg.out / f"{stem}.onnx",
                                                     dynamic_shapes=loaded.dynamic_shapes)
    with phase("evaluate", seconds):
        _evaluate(cfg, loaded, gm, qmodel, result.paths.get("onnx"), evals, result, recipe.name)
    if cfg.report:
        from qpass.report import build_report

        with phase("report", seconds):
            batch = model_inputs(calib[:cfg.report_windows], loaded.kind)
            result.paths["report"] = build_report(
                prepared, batch, cfg.out / f"{stem}.report.html", title=f"{loaded.name}, "
                f"recipe {recipe.name}", accuracy=(result.metric, result.rows),
                progress=cfg.progress)
    return result
