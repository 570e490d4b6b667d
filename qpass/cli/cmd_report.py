"""``qpass report``: quantize in memory (no export) and write the HTML quantization report."""

from __future__ import annotations

import argparse
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
  qpass report                                   # SmolLM2-135M with w8a8_dynamic
  qpass report --recipe w8a8_static --out exports/static
  qpass report --recipe my_recipe.yaml --report-windows 2

The report (<out>/<model>-<recipe>.report.html, PNGs in <...>_files/) shows, per layer: the
float distribution with the int8 clip range each registered observer chooses, clip rate,
level utilization and SQNR, the precision assigned and why, the outlier columns; for the
model: the PPL of the float and quantized model and the error through depth.
qpass quantize writes the same report next to its ONNX file.

""" + EXIT_CODES_HELP


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    q = sub.add_parser("report", help="write the HTML quantization report (no ONNX export)",
                       description="Quantize in memory and write the quantization report.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(q)
    q.add_argument("--recipe", default="w8a8_dynamic", metavar="NAME|FILE",
                   help="a preset or a recipe file (default: %(default)s)")
    q.add_argument("--calib-windows", type=int, default=8, help="(default: %(default)s)")
    q.add_argument("--eval-windows", type=int, default=4, help="(default: %(default)s)")
    q.add_argument("--report-windows", type=int, default=1,
                   help="calibration windows the per-layer statistics use (default: "
                        "%(default)s)")
    q.add_argument("--out", type=Path, default=Path("exports"), help="(default: %(default)s)")
    return q


def run(args: argparse.Namespace) -> int:
    import torch

    from qpass.cli.cmd_quantize import resolve_cli_recipe
    from qpass.job import JobConfig, run_job

    recipe = resolve_cli_recipe(args.recipe)
    cfg = JobConfig(model=args.model, recipe=recipe, calib_windows=args.calib_windows,
                    eval_windows=args.eval_windows, window=args.window, out=args.out,
                    threads=args.threads, progress=not args.quiet, calib_text=args.calib_text,
                    eval_text=args.eval_text, onnx=False, save=False,
                    report_windows=args.report_windows)
    writable_folder(args.out)
    torch.set_num_threads(args.threads)
    result = run_job(cfg, lambda: load_any_model(args.model))
    label = "PPL" if result.metric == "perplexity" else "mean cosine"
    print()
    print_table(("variant", label), [(n, f"{v:.4f}") for n, v in result.rows])
    print(f"\nreport: {result.paths['report']}")
    return EXIT_OK
