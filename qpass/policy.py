"""Precision policies: who gets which LayerPrecision.

A Policy looks at the graph's quantization sites and returns assignments for some of them;
policies run in order and later ones win. Plugins register with ``@POLICIES.register`` or the
``qpass.policies`` entry-point group. The built-in policies beyond ``uniform`` and
``keep_float`` live in ``qpass.policies`` (rules, keep_sensitive, sensitivity, llm_int8).

``assign_precisions`` records, in ``ctx.report``, each site's FQN, op type and weight size
(``"sites"``) and the policies that assigned it, in order (``"assigned_by"``); each policy
writes its own findings under its registered name. ``qpass.precision_report`` reads them.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx

from qpass.config import LayerPrecision, Recipe
from qpass.quantizable import Site, canonical_weight, fetch_attr
from qpass.registry import Registry

POLICIES: Registry[type[Policy]] = Registry("policy", "qpass.policies")


@dataclass
class PolicyContext:
    """What a policy may read besides the sites: the (float, possibly transformed) graph, the
    recipe, the calibration batches (may be empty) and the assignment so far. A policy writes
    plain data for the precision report into ``report``."""

    gm: fx.GraphModule
    recipe: Recipe
    batches: list[tuple[Any, ...]] = field(default_factory=list)
    current: dict[str, LayerPrecision] = field(default_factory=dict)
    progress: bool = True
    report: dict[str, Any] = field(default_factory=dict)


class Policy(ABC):
    """Base of every precision policy; subclasses are frozen dataclasses holding their config."""

    @abstractmethod
    def assign(self, sites: list[Site], ctx: PolicyContext) -> dict[str, LayerPrecision]:
        """node name -> precision, for the sites this policy has an opinion on."""


@POLICIES.register("uniform")
@dataclass(frozen=True)
class Uniform(Policy):
    """Every site gets the same precision."""

    precision: LayerPrecision

    def assign(self, sites: list[Site], ctx: PolicyContext) -> dict[str, LayerPrecision]:
        return {s.node.name: self.precision for s in sites}


@POLICIES.register("keep_float")
@dataclass(frozen=True)
class KeepFloat(Policy):
    """Sites whose module FQN matches one of the globs stay float."""

    patterns: tuple[str, ...]

    def assign(self, sites: list[Site], ctx: PolicyContext) -> dict[str, LayerPrecision]:
        out = {}
        for s in sites:
            hit = next((p for p in self.patterns if fnmatch.fnmatchcase(s.fqn, p)), None)
            if hit is not None:
                out[s.node.name] = LayerPrecision(reason=f"keep_float pattern {hit!r}")
        return out


def recipe_policies(recipe: Recipe) -> list[Policy]:
    """The recipe's default precision, its ``keep_float`` globs, then its own policies."""
    return [Uniform(recipe.precision), KeepFloat(recipe.keep_float), *recipe.policies]


def _site_summary(gm: fx.GraphModule, s: Site) -> dict[str, Any]:
    w = canonical_weight(fetch_attr(gm, str(s.weight_node.target)), s.op)  # [N, K]
    return {"fqn": s.fqn, "op": s.op_type, "weights": w.numel(), "in_features": w.shape[1]}


def assign_precisions(sites: list[Site], policies: list[Policy],
                      ctx: PolicyContext) -> dict[str, LayerPrecision]:
    """Apply ``policies`` in order (later ones win); sites nobody assigns stay float."""
    ctx.current = {s.node.name: LayerPrecision(reason="no policy assigned it") for s in sites}
    ctx.report["sites"] = {s.node.name: _site_summary(ctx.gm, s) for s in sites}
    history: dict[str, list[str]] = ctx.report.setdefault("assigned_by", {})
    for policy in policies:
        try:
            name = POLICIES.name_of(policy)
        except KeyError:
            name = type(policy).__name__
        try:
            assigned = policy.assign(sites, ctx)
        except Exception as exc:
            raise RuntimeError(
                f"precision policy {name!r} ({type(policy).__module__}.{type(policy).__name__}) "
                f"raised {type(exc).__name__}: {exc}. Fix or remove this policy from the "
                "recipe's policies") from exc
        ctx.current.update(assigned)
        for node_name in assigned:
            history.setdefault(node_name, []).append(name)
    return ctx.current
