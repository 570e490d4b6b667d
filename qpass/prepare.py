"""Phase 1: insert observer nodes where the recipe quantizes activations statically."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx

from qpass.calibrate.calibrate import CalibrationDataError, check_batch
from qpass.capture import as_tuple, capture
from qpass.config import QuantSpec, Recipe
from qpass.convert.outliers import keep_mask
from qpass.observe import make_observer
from qpass.observe.module import ObserverModule
from qpass.passes import PassContext, run_passes
from qpass.policy import PolicyContext, assign_precisions, recipe_policies
from qpass.quantizable import Site, canonical_weight, fetch_attr, find_sites
from qpass.recipes import resolve_recipe
from qpass.state import META_KEY, InputSig, QpassState

log = logging.getLogger(__name__)


def _input_sigs(gm: fx.GraphModule, args: tuple[Any, ...] | None) -> tuple[InputSig, ...] | None:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    sigs = []
    for i, node in enumerate(placeholders):
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            shape = tuple(d if isinstance(d, int) else None for d in val.shape)
            sigs.append(InputSig(shape, val.dtype))
        elif args is not None and i < len(args) and isinstance(args[i], torch.Tensor):
            sigs.append(InputSig((None,) * args[i].dim(), args[i].dtype))
        else:
            return None
    return tuple(sigs)


def _insert_observers(gm: fx.GraphModule, sites: list[Site], state: QpassState) -> None:
    """One observer per (activation, spec, outlier columns): q/k/v share theirs."""
    Key = tuple[str, QuantSpec, tuple[int, ...] | None]
    shared: dict[Key, fx.Node] = {}
    consumers: dict[Key, list[str]] = {}
    for site in sites:
        prec = state.precisions[site.node.name]
        spec = prec.activation
        if spec is None or spec.dynamic:
            continue
        x = site.activation_node
        cols = prec.outlier_columns  # set for a static split only (LayerPrecision checks)
        key = (x.name, spec, cols)
        consumers.setdefault(key, []).append(site.fqn or site.node.name)
        if key not in shared:
            name = f"qpass_observer_{len(shared)}"
            k = canonical_weight(fetch_attr(gm, str(site.weight_node.target)), site.op).shape[1]
            keep = keep_mask(cols, k, torch.float32) if cols else None
            gm.add_submodule(name, ObserverModule(make_observer(spec), (), x.name, keep))
            with gm.graph.inserting_after(x):
                shared[key] = gm.graph.call_module(name, (x,))
            state.observers[name] = x.name
        site.node.update_arg(site.op.activation_arg, shared[key])
    for key, node in shared.items():
        gm.get_submodule(str(node.target)).consumers = tuple(consumers[key])


def _batches(calib_data: Iterable[Any] | None, sigs: tuple[InputSig, ...] | None) -> list[tuple]:
    if calib_data is None:
        return []
    if isinstance(calib_data, torch.Tensor):
        raise CalibrationDataError(
            "calibration data is a single tensor; pass a list of batches, e.g. [ids] or "
            "list(ids.split(1)) for one sequence per batch")
    batches = [as_tuple(b) for b in calib_data]
    for i, b in enumerate(batches):
        check_batch(i, b, sigs)
    return batches


def prepare(
    model_or_gm: torch.nn.Module,
    recipe: str | Recipe | dict,
    example_inputs: Any = None,
    *,
    calib_data: Iterable[Any] | None = None,
    dynamic_shapes: Any = None,
    progress: bool = True,
) -> fx.GraphModule:
    """Capture (if needed), run the recipe's float passes, assign precisions, run its weight
    passes and insert observers. ``calib_data`` feeds the passes and policies that need data
    (SmoothQuant, sensitivity, GPTQ ...); the observers still see data only in
    ``qpass.calibrate``. The input is not modified."""
    recipe = resolve_recipe(recipe)
    args = as_tuple(example_inputs) if example_inputs is not None else None
    if isinstance(model_or_gm, fx.GraphModule):
        gm = copy.deepcopy(model_or_gm)
    elif args is None:
        raise ValueError("qpass.prepare needs example_inputs to capture an nn.Module")
    else:
        gm = capture(model_or_gm, args, dynamic_shapes=dynamic_shapes)
        if recipe.passes:  # the captured graph shares the model's tensors; passes write them
            gm = copy.deepcopy(gm)
    sigs = _input_sigs(gm, args)
    ctx = PassContext(recipe, _batches(calib_data, sigs), progress=progress)
    gm = run_passes(gm, "float", ctx)
    sites = find_sites(gm)
    if not sites:
        log.warning("qpass.prepare found no linear/matmul op with a constant weight to quantize")
    policy_ctx = PolicyContext(gm, recipe, ctx.batches, progress=progress)
    ctx.precisions = assign_precisions(sites, recipe_policies(recipe), policy_ctx)
    gm = run_passes(gm, "weights", ctx)
    sites = find_sites(gm)
    state = QpassState(
        recipe=recipe,
        precisions=ctx.precisions,
        fqns={s.node.name: s.fqn for s in sites},
        inputs=sigs,
        reports={"passes": ctx.reports, "policies": policy_ctx.report},
        quantized_weights=ctx.quantized_weights,
    )
    _insert_observers(gm, sites, state)
    gm.meta[META_KEY] = state
    gm.graph.lint()
    gm.recompile()
    quantized = sum(not p.is_float for p in state.precisions.values())
    log.info("qpass.prepare: %d of %d sites quantized, %d observers", quantized, len(sites),
             len(state.observers))
    return gm
