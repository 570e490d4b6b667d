"""Capture: nn.Module -> torch.fx.GraphModule, by torch.export (ATen IR) or symbolic_trace."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import torch
import torch.fx as fx

from qpass.capture.normalize import normalize_traced

log = logging.getLogger(__name__)
METHODS = ("auto", "export", "symbolic_trace")


class CaptureError(RuntimeError):
    """Neither capture method could turn the model into a graph."""


def as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def _export(model: torch.nn.Module, args: tuple[Any, ...], dynamic_shapes: Any) -> fx.GraphModule:
    ep = torch.export.export(model, args, dynamic_shapes=dynamic_shapes, strict=False)
    gm = ep.module()
    gm.training = model.training  # the mode is baked into the graph; .train() is refused
    gm.meta["qpass_capture"] = "export"
    return gm


def _trace(model: torch.nn.Module) -> fx.GraphModule:
    gm = torch.fx.symbolic_trace(model)
    gm.train(model.training)
    normalize_traced(gm)
    gm.meta["qpass_capture"] = "symbolic_trace"
    return gm


def _cause(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    text = "".join(lines).strip()
    return text if len(text) < 1500 else text[:1500] + " ..."


def capture(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    dynamic_shapes: Any = None,
    method: str = "auto",
) -> fx.GraphModule:
    """Capture ``model`` as a GraphModule whose op nodes know their module's FQN.

    ``method="auto"`` tries ``torch.export`` (non-strict, ATen IR) and then
    ``torch.fx.symbolic_trace``; if both fail, the error shows both causes.
    """
    if method not in METHODS:
        raise ValueError(f"capture method {method!r} is not valid; allowed: {', '.join(METHODS)}")
    if isinstance(model, fx.GraphModule):
        return model
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"qpass.capture needs a torch.nn.Module, got {type(model).__name__}")
    args = as_tuple(example_inputs)
    if method == "export":
        return _export(model, args, dynamic_shapes)
    if method == "symbolic_trace":
        return _trace(model)
    try:
        return _export(model, args, dynamic_shapes)
    except Exception as export_exc:
        log.info("torch.export failed (%s); trying torch.fx.symbolic_trace", export_exc)
        try:
            return _trace(model)
        except Exception as trace_exc:
            raise CaptureError(
                f"qpass could not capture {type(model).__name__} as a graph.\n"
                f"- torch.export (non-strict) failed: {_cause(export_exc)}\n"
                f"- torch.fx.symbolic_trace failed: {_cause(trace_exc)}\n"
                "What to try: make data-dependent Python control flow tensor ops "
                "(torch.where, torch.cond), pass example_inputs that match what forward() "
                "expects, give dynamic_shapes for axes that vary, or capture a submodule "
                "that is traceable."
            ) from trace_exc
