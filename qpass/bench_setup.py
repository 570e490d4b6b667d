"""What every ``python -m qpass.bench*`` script shares: the measurement protocol's options and
the model, text and captured graph it measures on.

The protocol: calibrate on ``--calib-windows`` x ``--window`` tokens of the first half of the
built-in Wikipedia text, evaluate on ``--eval-windows`` x ``--window`` tokens of the second
half (disjoint), ``--threads`` intra-op threads for torch and ONNX Runtime.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.fx as fx

import qpass
from qpass.eval import LoadedModel, load_model, wikipedia_token_slices


def bench_parser(module: str, doc: str | None, models: dict[str, str]) -> argparse.ArgumentParser:
    """The parser of ``python -m <module>``: its docstring as help, the model as first argument."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=sorted(models))
    return p


def add_protocol_args(p: argparse.ArgumentParser, out: str) -> None:
    """The options of the protocol, and ``--out`` defaulting to ``exports/<out>``."""
    p.add_argument("--calib-windows", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=12)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("exports") / out)


@dataclass
class BenchSetup:
    loaded: LoadedModel
    calib: torch.Tensor  # [calib_windows, window] token ids
    evals: torch.Tensor  # [eval_windows, window] token ids, disjoint from calib
    example: tuple[torch.Tensor]  # one calibration window, [1, window]
    gm: fx.GraphModule  # the captured FP32 model

    @property
    def batches(self) -> list[tuple[torch.Tensor]]:
        """The calibration windows as batches of one."""
        return [(self.calib[i:i + 1],) for i in range(len(self.calib))]


def bench_setup(a: argparse.Namespace, model: str, *loggers: str) -> BenchSetup:
    """Logging (INFO for ``qpass`` and ``loggers``), threads, the output folder, then the
    model, the text windows and the captured graph."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("qpass", *loggers):
        logging.getLogger(name).setLevel(logging.INFO)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(model)
    calib, evals = wikipedia_token_slices(loaded.tokenizer, calib_windows=a.calib_windows,
                                          eval_windows=a.eval_windows, window=a.window)
    example = (calib[:1],)
    return BenchSetup(loaded, calib, evals, example, qpass.capture(loaded.module, example))
