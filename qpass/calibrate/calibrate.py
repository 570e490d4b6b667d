"""Phase 2: run calibration batches through a prepared graph so its observers see real data."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
from tqdm.auto import tqdm

from qpass.capture import as_tuple
from qpass.observe.module import NonFiniteActivationError
from qpass.state import InputSig, get_state

log = logging.getLogger(__name__)


class CalibrationDataError(ValueError):
    """Calibration data is empty or does not fit the inputs the model was captured with."""


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("*" if d is None else str(d) for d in shape) + "]"


def check_batch(i: int, batch: tuple[Any, ...], sigs: tuple[InputSig, ...] | None) -> None:
    if sigs is None:
        return
    if len(batch) != len(sigs):
        raise CalibrationDataError(
            f"calibration batch {i} has {len(batch)} input(s) but the model was captured with "
            f"{len(sigs)}; give each batch as a tuple of positional inputs in the same order as "
            "example_inputs (or a single tensor for a one-input model)"
        )
    for j, (x, sig) in enumerate(zip(batch, sigs, strict=True)):
        if not isinstance(x, torch.Tensor):
            raise CalibrationDataError(
                f"calibration batch {i}, input {j} is a {type(x).__name__}, expected a tensor "
                f"of shape {_fmt(sig.shape)} and dtype {sig.dtype}")
        fits = x.dim() == len(sig.shape) and all(
            d is None or d == n for d, n in zip(sig.shape, x.shape, strict=True))
        if not fits or x.dtype != sig.dtype:
            raise CalibrationDataError(
                f"calibration batch {i}, input {j} has shape {list(x.shape)} and dtype {x.dtype}; "
                f"the model was captured for shape {_fmt(sig.shape)} ('*' = dynamic) and dtype "
                f"{sig.dtype}. Reshape or pad the batch, or capture with dynamic_shapes for "
                "the axes that vary"
            )


def calibrate(
    prepared: fx.GraphModule, batches: Iterable[Any], progress: bool = True
) -> fx.GraphModule:
    """Run ``batches`` (each a tuple of positional inputs, or one tensor) through ``prepared``.

    Observers update in place; the same GraphModule is returned. Call it again with more data
    to keep accumulating statistics.
    """
    state = get_state(prepared, "calibrate")
    if isinstance(batches, torch.Tensor):
        raise CalibrationDataError(
            "calibration data is a single tensor; pass a list of batches, e.g. [ids] or "
            "list(ids.split(1)) for one sequence per batch")
    total = len(batches) if hasattr(batches, "__len__") else None
    seen = 0
    with torch.no_grad():
        for i, batch in enumerate(tqdm(batches, total=total, desc="qpass calibrate",
                                       disable=not progress, unit="batch")):
            args = as_tuple(batch)
            check_batch(i, args, state.inputs)
            try:
                prepared(*args)
            except NonFiniteActivationError as exc:
                raise NonFiniteActivationError(f"calibration batch {i}: {exc}") from None
            seen += 1
    if seen == 0:
        raise CalibrationDataError(
            "calibration data is empty: qpass.calibrate got no batches. Pass at least one batch "
            "shaped like example_inputs (e.g. 8 sequences of 512 tokens for an LLM)")
    state.calibrated_batches += seen
    state.phase = "calibrated"
    log.info("qpass.calibrate: %d batches, %d observers", seen, len(state.observers))
    return prepared
