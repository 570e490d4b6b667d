"""The ``qpass`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXAMPLES = """examples:
  qpass quantize                                  # SmolLM2-135M, w8a8_dynamic, ONNX in exports/
  qpass quantize --recipe w8a8_static --eval-windows 12
  qpass quantize --model minilm --recipe w8a16
"""


def _parser() -> argparse.ArgumentParser:
    from qpass.job import JobConfig

    d = JobConfig()
    p = argparse.ArgumentParser(prog="qpass", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Compiler-style post-training quantization.")
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="quantize a built-in model, export ONNX, print PPL",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--model", default=d.model, help="built-in model: smollm2-135m or minilm")
    q.add_argument("--recipe", default=d.recipe,
                   help="built-in recipe: w8a16, w8a8_dynamic, w8a8_static")
    q.add_argument("--calib-windows", type=int, default=d.calib_windows)
    q.add_argument("--eval-windows", type=int, default=d.eval_windows)
    q.add_argument("--window", type=int, default=None, help="tokens per window")
    q.add_argument("--out", type=Path, default=d.out, help="where the ONNX file goes")
    q.add_argument("--threads", type=int, default=d.threads)
    q.add_argument("--quiet", action="store_true", help="no progress bars or logs")
    return p


def _print_result(result, recipe: str) -> None:
    label = "PPL" if result.metric == "perplexity" else "mean cosine"
    print(f"\n| variant | {label} | Δ% vs FP32 |\n|---|---|---|")
    base = result.rows[0][1] if result.metric == "perplexity" else None
    for name, value in result.rows:
        delta = "-" if base is None else f"{100 * (value / base - 1):+.2f}"
        print(f"| {name} | {value:.4f} | {delta} |")
    print("\nONNX Runtime vs torch reference: " +
          ", ".join(f"{k} {v:.4g}" for k, v in result.parity.items()))
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()))
    print(f"ONNX ({recipe}): {result.onnx_path}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("qpass").setLevel(logging.WARNING if args.quiet else logging.INFO)
    from qpass.job import JobConfig, run_job

    try:
        cfg = JobConfig(model=args.model, recipe=args.recipe, calib_windows=args.calib_windows,
                        eval_windows=args.eval_windows, window=args.window, out=args.out,
                        threads=args.threads, progress=not args.quiet)
        result = run_job(cfg)
    except (KeyError, ValueError, ImportError, FileNotFoundError) as exc:
        print(f"qpass: error: {exc}", file=sys.stderr)
        return 2
    _print_result(result, args.recipe)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
