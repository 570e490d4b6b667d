"""Graph passes: ``(gm, ctx) -> PassResult(gm, modified, report)``.

A pass is a frozen dataclass (its config) registered by name, so a recipe can list it and
round-trip it through a dict::

    @PASSES.register("smoothquant")
    @dataclass(frozen=True)
    class SmoothQuant(Pass):
        alpha: float | None = 0.5
        stage = "float"
        def __call__(self, gm, ctx): ...

Passes never call each other; ``qpass.prepare`` runs the recipe's passes in order within
two stages:

- ``"float"`` passes run on the captured float graph before precisions are assigned. They
  must keep the float model's function (SmoothQuant's scale folding); data-driven policies
  (sensitivity, LLM.int8() columns) then see the transformed graph.
- ``"weights"`` passes run after precisions are assigned and read ``ctx.precisions``
  (GPTQ, AWQ: they change weights for the format a layer was given).

Activation ranges are observed after both stages, so every range is calibrated on the graph
as it will run. Third-party passes arrive through the ``qpass.passes`` entry-point group.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.fx as fx

from qpass.config import LayerPrecision, Recipe
from qpass.registry import Registry

log = logging.getLogger(__name__)

STAGES = ("float", "weights")


@dataclass
class PassContext:
    """What a pass may read: the recipe, the calibration batches (tuples of positional
    inputs), the precisions (``None`` during the float stage) and the other passes' reports.

    ``quantized_weights`` (node name -> ``qpass.convert.weights.QuantizedWeight``) is where a
    weights-stage pass that chooses the integers itself (GPTQ) hands them to convert, which
    stores them instead of rounding the float weight to nearest. Such a pass also writes the
    dequantized weight into the graph, so the prepared model computes what convert will store.
    """

    recipe: Recipe
    batches: list[tuple[Any, ...]]
    precisions: dict[str, LayerPrecision] | None = None
    progress: bool = True
    reports: dict[str, Any] = field(default_factory=dict)
    quantized_weights: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PassResult:
    gm: fx.GraphModule
    modified: bool
    report: Any = None  # plain data (dicts, lists, numbers) for the quantization report


class Pass(ABC):
    """Base of every graph pass. Subclasses are frozen dataclasses holding their config."""

    stage: ClassVar[str] = "float"
    needs_data: ClassVar[bool] = True

    @abstractmethod
    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Transform ``gm`` (in place or into a new GraphModule) and say what changed."""


PASSES: Registry[type[Pass]] = Registry("pass", "qpass.passes")


def run_passes(gm: fx.GraphModule, stage: str, ctx: PassContext) -> fx.GraphModule:
    """Run the recipe's passes of ``stage`` in order; ``gm.graph.lint()`` after each."""
    if stage not in STAGES:
        raise ValueError(f"pass stage {stage!r} is not one of {STAGES}")
    for p in ctx.recipe.passes:
        if type(p).stage != stage:
            continue
        name = PASSES.name_of(p)
        if p.needs_data and not ctx.batches:
            raise ValueError(
                f"pass {name!r} of recipe {ctx.recipe.name!r} needs calibration data; pass "
                "calib_data= to qpass.prepare (qpass.quantize passes its own along)")
        try:
            with torch.no_grad():
                result = p(gm, ctx)
        except Exception as exc:
            exc.add_note(f"(raised by qpass pass {name!r} of recipe {ctx.recipe.name!r})")
            raise
        gm = result.gm
        gm.graph.lint()
        gm.recompile()
        ctx.reports[name] = result.report
        log.info("qpass pass %s: %s", name, "modified the graph" if result.modified
                 else "left the graph unchanged")
    return gm
