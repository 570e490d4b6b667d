"""``sensitivity``: keep the layers whose quantization hurts the output most in float.

Each site the assignment so far quantizes is scored by how much quantizing it alone, with
the precision it was assigned, changes the model's output (``output_error``: a linearized
one-at-a-time measure that costs one forward and ``probes`` backward passes per batch instead
of one forward per site). Then either the ``keep_worst`` worst sites stay float, or, walking
the ranking from the worst, each site that still fits ``float_budget`` (a fraction of the
weight elements of the sites being ranked) stays float.

The ranking goes into the precision report (``ctx.report["sensitivity"]``).
"""

from __future__ import annotations

from dataclasses import dataclass

from qpass.config import LayerPrecision
from qpass.policies.output_error import output_error_scores
from qpass.policy import POLICIES, Policy, PolicyContext
from qpass.quantizable import Site, fetch_attr


def _bad(name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"Sensitivity.{name}={value!r} is not valid; allowed: {allowed}")


@POLICIES.register("sensitivity")
@dataclass(frozen=True)
class Sensitivity(Policy):
    """Give exactly one of ``keep_worst`` (a count) or ``float_budget`` (a fraction in [0, 1]
    of the ranked sites' weight elements). ``batches``: calibration batches scored (the
    first ones); ``probes``: random output projections per batch; ``seed`` fixes them."""

    keep_worst: int | None = None
    float_budget: float | None = None
    batches: int = 1
    probes: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.keep_worst is None) == (self.float_budget is None):
            raise _bad("keep_worst", self.keep_worst, "exactly one of keep_worst (a count) and "
                       f"float_budget (a fraction) set; float_budget={self.float_budget!r}")
        if self.keep_worst is not None and (isinstance(self.keep_worst, bool)
                                            or not isinstance(self.keep_worst, int)
                                            or self.keep_worst < 0):
            raise _bad("keep_worst", self.keep_worst, "a non-negative integer")
        b = self.float_budget
        if b is not None and (isinstance(b, bool) or not isinstance(b, int | float)
                              or not 0 <= b <= 1):
            raise _bad("float_budget", b, "a fraction between 0 and 1, e.g. 0.05 for 5% of "
                       "the linear weights")
        for name in ("batches", "probes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _bad(name, v, "a positive integer")

    def _chosen(self, ranking: list[tuple[Site, float, int]]) -> set[str]:
        if self.keep_worst is not None:
            return {s.node.name for s, _, _ in ranking[:self.keep_worst]}
        budget = self.float_budget * sum(n for _, _, n in ranking)
        chosen, used = set(), 0
        for s, _, n in ranking:
            if used + n <= budget:
                chosen.add(s.node.name)
                used += n
        return chosen

    def assign(self, sites: list[Site], ctx: PolicyContext) -> dict[str, LayerPrecision]:
        targets = [s for s in sites if not ctx.current[s.node.name].is_float]
        if not ctx.batches:
            raise ValueError("the sensitivity policy measures output error on calibration data "
                             "and got none: pass calib_data= to qpass.prepare (qpass.quantize "
                             "passes its own along)")
        scores = output_error_scores(ctx.gm, targets, ctx.current, ctx.batches[:self.batches],
                                     probes=self.probes, seed=self.seed, progress=ctx.progress)
        sizes = {s.node.name: fetch_attr(ctx.gm, str(s.weight_node.target)).numel()
                 for s in targets}
        ranking = sorted(((s, scores[s.node.name], sizes[s.node.name]) for s in targets),
                         key=lambda t: -t[1])
        chosen = self._chosen(ranking)
        out, rows = {}, []
        for rank, (s, score, n) in enumerate(ranking, start=1):
            rows.append({"rank": rank, "node": s.node.name, "fqn": s.fqn, "score": score,
                         "weights": n, "float": s.node.name in chosen})
            if s.node.name in chosen:
                out[s.node.name] = LayerPrecision(
                    reason=f"sensitivity rank {rank} of {len(ranking)} (relative output "
                           f"error {score:.3g})")
        total = sum(sizes.values())
        ctx.report["sensitivity"] = {
            "metric": "relative output error ||J dy||^2 / ||y||^2 of quantizing one site alone "
                      f"(linearized, {self.probes} probes, {min(self.batches, len(ctx.batches))}"
                      " batch(es))",
            "ranking": rows, "float_sites": len(chosen),
            "float_weight_fraction": sum(sizes[n] for n in chosen) / total if total else 0.0}
        return out
