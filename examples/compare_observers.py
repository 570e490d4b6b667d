"""Compare observers: the same static int8 recipe calibrated with each registered observer.

    python examples/compare_observers.py [--observers minmax percentile mse kl aciq]

On all-MiniLM-L6-v2 (fast on 2 cores): output cosine similarity with the float model on
held-out text for each observer. `qpass report` shows the per-layer clip ranges behind it.
"""

import argparse

import torch

import qpass
from qpass.config import QuantSpec
from qpass.eval import load_model, wikipedia_token_slices
from qpass.eval.similarity import output_similarity


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--observers", nargs="+", default=["minmax", "percentile", "mse", "aciq"])
    p.add_argument("--calib-windows", type=int, default=4)
    a = p.parse_args(argv)
    model = load_model("minilm")
    calib, evals = wikipedia_token_slices(model.tokenizer, calib_windows=a.calib_windows,
                                          eval_windows=4, window=128)
    batches = [(ids[None], torch.ones_like(ids[None])) for ids in calib]
    held_out = [(ids[None], torch.ones_like(ids[None])) for ids in evals]
    gm = qpass.capture(model.module, batches[0])
    base = qpass.RECIPES.get("w8a8_static")
    cosine = {}
    for name in a.observers:
        act = QuantSpec(**{**base.precision.activation.__dict__, "observer": name})
        recipe = base.replace(name=f"w8a8_static_{name}",
                              precision=base.precision.__class__(
                                  weight=base.precision.weight, activation=act,
                                  reason=f"static int8, {name} ranges"))
        qmodel = qpass.quantize(gm, recipe, batches, batches[0], progress=False)
        cosine[name] = output_similarity(gm, qmodel, held_out).mean_cosine
        print(f"{name:>12}: cosine vs FP32 {cosine[name]:.5f}")
    return cosine


if __name__ == "__main__":
    main()
