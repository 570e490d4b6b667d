"""An example qpass policy plugin: keep the first and last quantizable layers in float.

The first layers see the raw embeddings and the last ones shape the output directly; keeping
a few of them float is a common, cheap way to buy back accuracy. qpass loads this class
through the ``qpass.policies`` entry point named ``first_last_float`` (see pyproject.toml).
"""

from __future__ import annotations

from dataclasses import dataclass

from qpass.config import LayerPrecision
from qpass.policy import Policy, PolicyContext
from qpass.quantizable import Site

__all__ = ["FirstLastFloat"]


@dataclass(frozen=True)
class FirstLastFloat(Policy):
    """Keep the ``first`` and ``last`` quantized sites (in graph order) in float."""

    first: int = 1
    last: int = 1

    def __post_init__(self) -> None:
        for name in ("first", "last"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"FirstLastFloat.{name}={value!r} is not valid; allowed: a "
                                 "non-negative integer")

    def assign(self, sites: list[Site], ctx: PolicyContext) -> dict[str, LayerPrecision]:
        quantized = [s for s in sites if not ctx.current[s.node.name].is_float]
        if self.first + self.last >= len(quantized) > 0:
            raise ValueError(
                f"first={self.first} + last={self.last} would keep all {len(quantized)} "
                "quantized layers float; lower them or drop this policy")
        chosen = quantized[:self.first] + quantized[len(quantized) - self.last:]
        ctx.report["first_last_float"] = [s.fqn for s in chosen]
        return {s.node.name: LayerPrecision(reason="first_last_float: a first or last layer")
                for s in chosen}
