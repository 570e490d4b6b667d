"""``qpass formats``: which number format is most accurate for this model, with data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qpass.cli.common import (
    EXIT_CODES_HELP,
    EXIT_OK,
    add_model_args,
    load_any_model,
    print_table,
    writable_folder,
)

EXAMPLES = """examples:
  qpass formats                                   # every weight and activation of SmolLM2
  qpass formats --layer '*layers.3.mlp.down_proj' --all
  qpass formats --model minilm --windows 4

Compares int8 (MinMax and the best observer), fp8 e4m3, fp8 e5m2 and int4 with
group size 128 by dequantization error (relative MSE and SQNR). Weights: one scale per output
channel (int4: per group); activations: one scale per tensor (int4: per group of each token).
Writes <out>/formats.json (every tensor) and <out>/formats.png.

""" + EXIT_CODES_HELP


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    q = sub.add_parser("formats", help="int8 vs fp8 vs int4: dequantization error per tensor",
                       description="Dequantization error of int8, fp8 e4m3/e5m2 and int4 g128 "
                       "on every weight and activation tensor.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(q)
    q.add_argument("--layer", default="*", metavar="GLOB",
                   help="only sites whose module FQN matches (default: all)")
    q.add_argument("--windows", type=int, default=1,
                   help="calibration windows the activations come from (default: %(default)s)")
    q.add_argument("--all", action="store_true", help="print every tensor, not just the summary")
    q.add_argument("--out", type=Path, default=Path("exports/formats"),
                   help="folder for formats.json and formats.png (default: %(default)s)")
    return q


def run(args: argparse.Namespace) -> int:
    import torch

    import qpass
    from qpass.formats import FORMAT_NAMES, compare_formats, formats_figure, summarize, to_json
    from qpass.job import model_inputs, token_slices

    writable_folder(args.out)
    torch.set_num_threads(args.threads)
    loaded = load_any_model(args.model)
    window = args.window or (512 if loaded.kind == "causal_lm" else 128)
    calib, _ = token_slices(loaded.tokenizer, args.calib_text, None, max(args.windows, 2), 1,
                            window)
    example = model_inputs(calib[:2], loaded.kind)
    gm = qpass.capture(loaded.module, example, dynamic_shapes=loaded.dynamic_shapes)
    prepared = qpass.prepare(gm, "w8a16", example, progress=False)
    results = compare_formats(prepared, model_inputs(calib[:args.windows], loaded.kind),
                              args.layer)
    if args.all:
        print_table(("tensor", "kind", *(f"{f} SQNR dB" for f in FORMAT_NAMES), "best"), [
            (r.name, r.kind, *(f"{r.errors[f].sqnr_db:.1f}" for f in FORMAT_NAMES), r.best())
            for r in results])
        print()
    print_table(("kind", "format", "tensors", "median SQNR dB", "median rel. MSE", "best on"), [
        (s["kind"], s["format"], s["tensors"], f"{s['median_sqnr_db']:.2f}",
         f"{s['median_rel_mse']:.3g}", s["best_on"]) for s in summarize(results)])
    (args.out / "formats.json").write_text(json.dumps(to_json(results), indent=1))
    (args.out / "formats.png").write_bytes(formats_figure(results))
    print(f"\nwrote {args.out / 'formats.json'} and {args.out / 'formats.png'}")
    return EXIT_OK
