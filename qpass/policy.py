"""Precision policies: who gets which LayerPrecision.

A Policy looks at the graph's quantization sites and returns assignments for some of them;
policies run in order and later ones win. Plugins register with ``@POLICIES.register`` or the
``qpass.policies`` entry-point group.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from dataclasses import dataclass

from qpass.config import LayerPrecision, Recipe
from qpass.quantizable import Site
from qpass.registry import Registry

POLICIES: Registry[type[Policy]] = Registry("policy", "qpass.policies")


class Policy(ABC):
    @abstractmethod
    def assign(self, sites: list[Site]) -> dict[str, LayerPrecision]:
        """node name -> precision, for the sites this policy has an opinion on."""


@POLICIES.register("uniform")
@dataclass(frozen=True)
class Uniform(Policy):
    """Every site gets the same precision."""

    precision: LayerPrecision

    def assign(self, sites: list[Site]) -> dict[str, LayerPrecision]:
        return {s.node.name: self.precision for s in sites}


@POLICIES.register("keep_float")
@dataclass(frozen=True)
class KeepFloat(Policy):
    """Sites whose module FQN matches one of the globs stay float."""

    patterns: tuple[str, ...]

    def assign(self, sites: list[Site]) -> dict[str, LayerPrecision]:
        out = {}
        for s in sites:
            hit = next((p for p in self.patterns if fnmatch.fnmatchcase(s.fqn, p)), None)
            if hit is not None:
                out[s.node.name] = LayerPrecision(reason=f"keep_float pattern {hit!r}")
        return out


def recipe_policies(recipe: Recipe) -> list[Policy]:
    return [Uniform(recipe.precision), KeepFloat(recipe.keep_float)]


def assign_precisions(sites: list[Site], policies: list[Policy]) -> dict[str, LayerPrecision]:
    """Apply ``policies`` in order (later ones win); sites nobody assigns stay float."""
    result = {s.node.name: LayerPrecision(reason="no policy assigned it") for s in sites}
    for policy in policies:
        result.update(policy.assign(sites))
    return result
