"""The ``qpass`` command: quantize, eval, report, formats, bench, recipes.

Each subcommand lives in ``qpass.cli.cmd_<name>`` with ``add_parser(sub)`` and
``run(args) -> exit code``. Results go to stdout, progress bars and logs to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from qpass.cli.common import (
    EXIT_CODES_HELP,
    EXIT_DEPENDENCY,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_NOT_FOUND,
    EXIT_OUTPUT,
    EXIT_USAGE,
    CliError,
)

COMMANDS = ("quantize", "eval", "report", "formats", "bench", "recipes")

EXAMPLES = """examples:
  qpass quantize                              # SmolLM2-135M, w8a8_dynamic: ONNX, report, PPL
  qpass quantize --recipe my_recipe.yaml --calib-text corpus.txt --out exports/mine
  qpass quantize --recipe w8a8_static --dump-recipe my_recipe.yaml   # write it, then edit it
  qpass eval --saved exports/smollm2-135m-w8a8_dynamic --onnx exports/smollm2-135m-w8a8_dynamic.onnx
  qpass report --recipe w8a8_static           # why did static int8 lose accuracy?
  qpass formats --layer '*layers.3.mlp*'      # int8 vs fp8 vs int4 on one block
  qpass bench exports/*.onnx                  # ONNX Runtime latency, side by side
  qpass recipes --show w8a8_dynamic           # presets and plugins

""" + EXIT_CODES_HELP


def build_parser() -> argparse.ArgumentParser:
    from qpass.cli import (
        cmd_bench,
        cmd_eval,
        cmd_formats,
        cmd_quantize,
        cmd_recipes,
        cmd_report,
    )

    p = argparse.ArgumentParser(
        prog="qpass", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compiler-style post-training quantization of PyTorch models (LLMs first).")
    from qpass import __version__

    p.add_argument("--version", action="version", version=f"qpass {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (cmd_quantize, cmd_eval, cmd_report, cmd_formats, cmd_bench, cmd_recipes):
        q = module.add_parser(sub)
        q.add_argument("--quiet", "-q", action="store_true",
                       help="no progress bars or logs; results only")
        q.set_defaults(run=module.run)
    return p


def _code_for(exc: BaseException) -> int:
    """The exit code of an exception that escaped a subcommand (see EXIT_CODES_HELP)."""
    from qpass.calibrate import CalibrationDataError
    from qpass.capture import CaptureError
    from qpass.observe.module import NonFiniteActivationError

    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, CaptureError | CalibrationDataError | NonFiniteActivationError):
        return EXIT_MODEL
    if isinstance(exc, ImportError):
        return EXIT_DEPENDENCY
    if isinstance(exc, FileNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, PermissionError | IsADirectoryError | NotADirectoryError):
        return EXIT_OUTPUT
    if isinstance(exc, ValueError | KeyError | TypeError):
        return EXIT_USAGE
    if isinstance(exc, RuntimeError):
        return EXIT_MODEL
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("qpass").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("qpass: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the one place that turns errors into exit codes
        code = _code_for(exc)
        if code == EXIT_ERROR:
            traceback.print_exc()
            print(f"qpass: internal error: {type(exc).__name__}: {exc}. Please report it with "
                  "the traceback above.", file=sys.stderr)
        else:
            text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"qpass {args.command}: error: {text}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
