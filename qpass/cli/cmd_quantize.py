"""``qpass quantize``: model -> quantized model (saved), ONNX, report, perplexity table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qpass.cli.common import (
    EXIT_CODES_HELP,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_model_args,
    load_any_model,
    print_table,
    writable_file,
    writable_folder,
)

EXAMPLES = """examples:
  qpass quantize                                   # SmolLM2-135M, w8a8_dynamic, into exports/
  qpass quantize --recipe w8a8_static --eval-windows 12
  qpass quantize --recipe examples/recipes/w8a8_smoothquant.yaml
  qpass quantize --model minilm --recipe w8a16 --no-report
  qpass quantize --model mypkg.models:load_tiny --calib-text corpus.txt
  qpass quantize --recipe w8a8_dynamic --dump-recipe my.toml   # write the recipe, then stop

outputs (in --out, named <model>-<recipe>):
  <stem>.onnx          QDQ ONNX (opset 21) for ONNX Runtime
  <stem>/              the quantized model: model.safetensors + qpass.json (qpass.save.load)
  <stem>.report.html   the quantization report (per-layer ranges, errors, precisions)
  <stem>.recipe.yaml   the effective recipe

""" + EXIT_CODES_HELP


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    q = sub.add_parser("quantize", help="quantize a model: saved model, ONNX, report, PPL table",
                       description="Quantize a model with a recipe, save it, export ONNX, "
                       "write the report and print a perplexity table.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(q)
    q.add_argument("--recipe", default="w8a8_dynamic", metavar="NAME|FILE",
                   help="a preset (qpass recipes lists them) or a .yaml/.toml/.json recipe file "
                        "(default: %(default)s)")
    q.add_argument("--dump-recipe", type=Path, default=None, metavar="FILE",
                   help="write the effective recipe to FILE (.yaml, .toml or .json; '-' for "
                        "stdout) and exit without quantizing")
    q.add_argument("--calib-windows", type=int, default=8, help="calibration windows "
                   "(default: %(default)s)")
    q.add_argument("--eval-windows", type=int, default=4, help="evaluation windows "
                   "(default: %(default)s)")
    q.add_argument("--out", type=Path, default=Path("exports"), help="output folder "
                   "(default: %(default)s)")
    q.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    q.add_argument("--no-save", action="store_true", help="do not save the quantized model")
    q.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    return q


def resolve_cli_recipe(text: str):
    from qpass.recipe_files import RecipeFileError, load_recipe

    try:
        return load_recipe(text)
    except RecipeFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except KeyError as exc:
        raise CliError(f"{exc.args[0]} Or give the path of a .yaml/.toml/.json recipe file.",
                       EXIT_USAGE) from None


def _dump(recipe, target: Path) -> int:
    from qpass.recipe_files import dump_recipe, recipe_to_text

    if str(target) == "-":
        sys.stdout.write(recipe_to_text(recipe, ".yaml"))
    else:
        path = dump_recipe(recipe, writable_file(target, "--dump-recipe"))
        print(f"wrote the effective recipe {recipe.name!r} to {path}")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    import torch

    from qpass.job import JobConfig, run_job

    recipe = resolve_cli_recipe(args.recipe)
    if args.dump_recipe is not None:
        return _dump(recipe, args.dump_recipe)
    cfg = JobConfig(model=args.model, recipe=recipe, calib_windows=args.calib_windows,
                    eval_windows=args.eval_windows, window=args.window, out=args.out,
                    threads=args.threads, progress=not args.quiet, calib_text=args.calib_text,
                    eval_text=args.eval_text, onnx=not args.no_onnx, save=not args.no_save,
                    report=not args.no_report)
    writable_folder(args.out)
    torch.set_num_threads(args.threads)
    result = run_job(cfg, lambda: load_any_model(args.model))
    print_result(result)
    return EXIT_OK


def print_result(result) -> None:
    label = "PPL" if result.metric == "perplexity" else "mean cosine"
    base = result.rows[0][1] if result.metric == "perplexity" else None
    print()
    print_table(("variant", label, "Δ% vs FP32"), [
        (name, f"{value:.4f}", "-" if base is None else f"{100 * (value / base - 1):+.2f}")
        for name, value in result.rows])
    if result.parity:
        print("\nONNX Runtime vs torch reference: " +
              ", ".join(f"{k} {v:.4g}" for k, v in result.parity.items()))
    total = sum(result.seconds.values())
    print(f"time: {total:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in
                                             result.seconds.items()) + ")")
    for what, path in result.paths.items():
        print(f"{what}: {path}")
