"""Lowering: replace the converted graph's Q/DQ linears with fused kernel calls.

``lower(qmodel, backend)`` finds every quantized linear of a converted GraphModule
(``qpass.lower.pattern``), asks the kernel registry for the best kernel of its family on the
backend, and replaces the pattern by one ``LoweredLinear`` call holding the packed weight.
On ``"cuda"`` a site whose GPU kernels do not fit (no GPU, no FP8 hardware, a shape a kernel
refuses) falls back to its family's CPU reference, which runs on any device; a site that no
family accepts keeps its reference Q/DQ ops. The report says which kernel each site got, and
why the others were refused.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from qpass.lower.device import cuda_why_not
from qpass.lower.kernel import BACKENDS, FAMILIES, KERNELS, Kernel, LoweredLinear, kernels_for
from qpass.lower.llm_int8 import match_outlier_split
from qpass.lower.pattern import QLinear, match_qlinear
from qpass.state import get_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteLowering:
    """What happened to one quantized linear."""

    name: str
    fqn: str
    in_features: int
    out_features: int
    kernel: str | None  # None: left as reference Q/DQ ops
    family: str | None
    refused: tuple[tuple[str, str], ...] = ()  # (kernel, why not), best first

    @property
    def lowered(self) -> bool:
        return self.kernel is not None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fqn": self.fqn, "in_features": self.in_features,
                "out_features": self.out_features, "kernel": self.kernel,
                "family": self.family, "refused": [list(r) for r in self.refused]}


@dataclass(frozen=True)
class LoweringReport:
    backend: str
    sites: tuple[SiteLowering, ...] = field(default_factory=tuple)

    def kernels(self) -> dict[str, int]:
        """How many sites each kernel got (``"reference Q/DQ"`` for those left unlowered)."""
        counts: dict[str, int] = {}
        for s in self.sites:
            key = s.kernel or "reference Q/DQ"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "kernels": self.kernels(),
                "sites": [s.to_dict() for s in self.sites]}


def _families() -> list[str]:
    plugin = {KERNELS.get(n).family for n in KERNELS.names()} - set(FAMILIES)
    return [*FAMILIES, *sorted(plugin)]


def choose_kernel(site: QLinear, backend: str) -> tuple[str | None, Kernel | None, str | None,
                                                        list[tuple[str, str]]]:
    """(name, kernel, family, refusals) for one site; name None when no kernel fits.

    The site's family is the first whose CPU reference accepts it. Within it, the backend's
    kernels are tried best first; on ``"cuda"`` the reference comes last.
    """
    refused: list[tuple[str, str]] = []
    for family in _families():
        references = kernels_for(family, "cpu")
        reasons = [(n, k.why_not(site)) for n, k in references]
        if any(r is None for _, r in reasons):
            break
        refused.extend((n, r) for n, r in reasons if r is not None)
    else:
        return None, None, None, refused
    candidates = kernels_for(family, backend) + (references if backend != "cpu" else [])
    refused = []
    for name, kernel in candidates:
        reason = kernel.why_not(site)
        if reason is None:
            return name, kernel, family, refused
        refused.append((name, reason))
    return None, None, family, refused


def _replace(gm: fx.GraphModule, site: QLinear, name: str, kernel: Kernel) -> None:
    with torch.no_grad():
        module = LoweredLinear(name, kernel, kernel.pack(site), site.in_features,
                               site.out_features)
    base = "qpass_lowered_" + (site.fqn or site.name).replace(".", "_")
    target, i = base, 1
    while hasattr(gm, target):
        target, i = f"{base}_{i}", i + 1
    gm.add_submodule(target, module)
    args = (site.x,) if site.bias is None else (site.x, site.bias)
    with gm.graph.inserting_before(site.output):
        call = gm.graph.call_module(target, args)
    call.meta.update(site.output.meta)
    site.output.replace_all_uses_with(call)


def _drop_dead_buffers(gm: fx.GraphModule, before: set[str]) -> None:
    """Delete the converted weights that no node reads any more."""
    gm.graph.eliminate_dead_code()
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for target in before - used:
        owner, _, attr = target.rpartition(".")
        mod = gm.get_submodule(owner) if owner else gm
        if attr in mod._buffers or attr in mod._parameters:
            delattr(mod, attr)


def lower(qmodel: fx.GraphModule, backend: str = "cuda") -> fx.GraphModule:
    """A copy of the converted ``qmodel`` with its quantized linears as fused kernel calls.

    ``backend``: ``"cuda"`` (triton / cuBLASLt kernels; CPU references where none fits) or
    ``"cpu"`` (the CPU references). The report is ``gm.meta["qpass"].reports["lower"]``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"lower backend={backend!r} is not valid; allowed: {', '.join(BACKENDS)}")
    state = get_state(qmodel, "lower")
    if state.phase != "converted":
        raise ValueError(f"qpass.lower needs a converted model, got one in phase {state.phase!r}; "
                         "call qpass.convert(prepared) first")
    if backend == "cuda" and (why := cuda_why_not()):
        log.warning("qpass.lower(backend='cuda'): %s; the GPU kernels will refuse every site "
                    "and the CPU references take their place", why)
    gm = copy.deepcopy(qmodel)
    before = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    rows = []
    for node in list(gm.graph.nodes):
        # matched one at a time: a site's input may be the kernel call that replaced the last
        if (found := match_qlinear(gm, node)) is None:
            continue
        site = match_outlier_split(gm, found) or found
        name, kernel, family, refused = choose_kernel(site, backend)
        if kernel is None and site is not found:  # no split kernel: lower the int8 part alone
            site = found
            name, kernel, family, more = choose_kernel(site, backend)
            refused += more
        if kernel is not None:
            _replace(gm, site, name, kernel)
        rows.append(SiteLowering(site.name, site.fqn, site.in_features, site.out_features,
                                 name, family, tuple(refused)))
        _log_site(rows[-1])
    _drop_dead_buffers(gm, before)
    gm.graph.lint()
    gm.recompile()
    report = LoweringReport(backend, tuple(rows))
    state = copy.copy(get_state(gm, "lower"))
    state.reports = {**state.reports, "lower": report}
    gm.meta["qpass"] = state
    log.info("qpass.lower(%s): %s", backend, report.kernels())
    return gm


def _log_site(row: SiteLowering) -> None:
    where = row.fqn or row.name
    why = "; ".join(f"{n}: {r}" for n, r in row.refused)
    if row.kernel is None:
        log.info("qpass.lower: %s [%dx%d] stays as reference Q/DQ ops (%s)", where,
                 row.in_features, row.out_features, why or "no kernel family accepts it")
    elif row.refused:
        log.info("qpass.lower: %s [%dx%d] -> %s (refused: %s)", where, row.in_features,
                 row.out_features, row.kernel, why)
    else:
        log.debug("qpass.lower: %s [%dx%d] -> %s", where, row.in_features, row.out_features,
                  row.kernel)
