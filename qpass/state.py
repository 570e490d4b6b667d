"""What prepare records on a GraphModule (``gm.meta["qpass"]``) for calibrate and convert."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from qpass.config import LayerPrecision, Recipe

META_KEY = "qpass"


@dataclass(frozen=True)
class InputSig:
    """Shape and dtype of one positional input; ``None`` in ``shape`` marks a dynamic axis."""

    shape: tuple[int | None, ...]
    dtype: torch.dtype


@dataclass
class QpassState:
    recipe: Recipe
    precisions: dict[str, LayerPrecision]  # node name -> precision
    fqns: dict[str, str]  # node name -> module FQN
    inputs: tuple[InputSig, ...] | None
    observers: dict[str, str] = field(default_factory=dict)  # observer module -> input node
    calibrated_batches: int = 0
    reports: dict[str, Any] = field(default_factory=dict)  # passes' and policies' reports
    # node name -> QuantizedWeight chosen by a pass (GPTQ); convert stores these integers
    quantized_weights: dict[str, Any] = field(default_factory=dict)
    phase: str = "prepared"  # prepared | calibrated | converted


def get_state(gm: fx.GraphModule, action: str) -> QpassState:
    state = getattr(gm, "meta", {}).get(META_KEY)
    if not isinstance(state, QpassState):
        raise ValueError(
            f"qpass.{action} needs a GraphModule returned by qpass.prepare; got "
            f"{type(gm).__name__} without qpass state. Call qpass.prepare(model, recipe, "
            "example_inputs) first"
        )
    return state
