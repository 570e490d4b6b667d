"""Write a precision policy: keep float the layers whose input has the largest range.

    python examples/custom_policy.py [--keep 2]

A policy is a frozen dataclass with ``assign(sites, ctx) -> {node name: LayerPrecision}``,
registered by name so recipe files can use it (``policies: [{type: widest_inputs_float,
keep: 2}]``). This one runs the calibration batches through the float graph, measures
max |x| at every site's input and keeps the ``keep`` widest float. Run on all-MiniLM-L6-v2
with static int8 activations; prints the output cosine similarity with and without it.
"""

import argparse
from dataclasses import dataclass

import torch

import qpass
from qpass.config import LayerPrecision
from qpass.eval import load_model, wikipedia_token_slices
from qpass.eval.similarity import output_similarity
from qpass.policy import POLICIES, Policy, PolicyContext
from qpass.quantizable import Site


@POLICIES.register("widest_inputs_float")
@dataclass(frozen=True)
class WidestInputsFloat(Policy):
    keep: int = 2

    def assign(self, sites: list[Site], ctx: PolicyContext) -> dict[str, LayerPrecision]:
        amax = {s.node.name: 0.0 for s in sites}  # max |x| at each site's input
        interp = _InputMax(ctx.gm, {s.node.name: s for s in sites}, amax)
        with torch.no_grad():
            for batch in ctx.batches:
                interp.run(*batch)
        widest = sorted(amax, key=amax.get, reverse=True)[:self.keep]
        ctx.report["widest_inputs_float"] = {n: amax[n] for n in widest}
        return {n: LayerPrecision(reason=f"widest input: max|x| = {amax[n]:.1f}") for n in widest}


class _InputMax(torch.fx.Interpreter):
    def __init__(self, gm, sites, amax):
        super().__init__(gm)
        self.sites, self.amax = sites, amax

    def run_node(self, n):
        site = self.sites.get(n.name)
        if site is not None:
            x = self.env[site.activation_node]
            self.amax[n.name] = max(self.amax[n.name], float(x.abs().max()))
        return super().run_node(n)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--keep", type=int, default=2)
    a = p.parse_args(argv)
    model = load_model("minilm")
    calib, evals = wikipedia_token_slices(model.tokenizer, calib_windows=4, eval_windows=4,
                                          window=128)
    batches = [(ids[None], torch.ones_like(ids[None])) for ids in calib]
    held_out = [(ids[None], torch.ones_like(ids[None])) for ids in evals]
    gm = qpass.capture(model.module, batches[0])
    base = qpass.RECIPES.get("w8a8_static")
    custom = base.replace(name="w8a8_static_widest_float",
                          policies=(WidestInputsFloat(keep=a.keep),))
    out = {}
    for recipe in (base, custom):
        qmodel = qpass.quantize(gm, recipe, batches, batches[0], progress=False)
        out[recipe.name] = output_similarity(gm, qmodel, held_out).mean_cosine
        print(f"{recipe.name}: cosine vs FP32 {out[recipe.name]:.5f}")
    out["kept"] = qmodel.meta["qpass"].reports["policies"]["widest_inputs_float"]
    fqns = qmodel.meta["qpass"].fqns
    print("kept float:", {fqns[n]: round(v, 1) for n, v in out["kept"].items()})
    return out


if __name__ == "__main__":
    main()
