"""One call for the three phases: prepare -> calibrate -> convert."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx

from qpass.calibrate import calibrate
from qpass.config import Recipe
from qpass.convert import convert
from qpass.prepare import prepare


def quantize(
    model: torch.nn.Module,
    recipe: str | Recipe | dict,
    calib_data: Iterable[Any],
    example_inputs: Any,
    *,
    dynamic_shapes: Any = None,
    progress: bool = True,
) -> fx.GraphModule:
    """Capture ``model``, quantize it with ``recipe`` calibrated on ``calib_data``.

    Returns the reference quantized GraphModule (see ``qpass.convert``). Recipes whose
    activations are float or dynamic need no calibration data; pass ``[]`` for them.
    """
    if not isinstance(calib_data, torch.Tensor):
        calib_data = list(calib_data)  # read once, used by passes and by calibrate
    prepared = prepare(model, recipe, example_inputs, calib_data=calib_data,
                       dynamic_shapes=dynamic_shapes, progress=progress)
    state = prepared.meta["qpass"]
    if state.observers:
        calibrate(prepared, calib_data, progress=progress)
    return convert(prepared)
