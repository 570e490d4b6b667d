"""``qpass eval``: perplexity of the float model, saved quantized models and ONNX files."""

from __future__ import annotations

import argparse
from pathlib import Path

from qpass.cli.common import (
    EXIT_CODES_HELP,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_model_args,
    load_any_model,
    print_table,
)

EXAMPLES = """examples:
  qpass eval                                          # FP32 SmolLM2-135M on held-out text
  qpass eval --saved exports/smollm2-135m-w8a8_dynamic --onnx exports/smollm2-135m-w8a8_dynamic.onnx
  qpass eval --no-float --onnx a.onnx --onnx b.onnx --eval-text my_text.txt --windows 12

The model (--model) gives the tokenizer, and the float reference unless --no-float.
Causal LMs report perplexity (lower is better).

""" + EXIT_CODES_HELP


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    q = sub.add_parser("eval", help="perplexity of the float model, saved models, ONNX files",
                       description="Perplexity on held-out text, each variant on the same "
                       "windows.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(q, text=False)
    q.add_argument("--eval-text", type=Path, default=None, metavar="FILE",
                   help="UTF-8 text to evaluate on (default: the built-in held-out Wikipedia)")
    q.add_argument("--windows", type=int, default=4, help="evaluation windows "
                   "(default: %(default)s)")
    q.add_argument("--saved", type=Path, action="append", default=[], metavar="DIR",
                   help="a quantized model folder written by qpass quantize / qpass.save "
                        "(repeatable)")
    q.add_argument("--onnx", type=Path, action="append", default=[], metavar="FILE",
                   help="an ONNX file that maps token ids to logits (repeatable)")
    q.add_argument("--no-float", action="store_true", help="skip the float reference")
    return q


def run(args: argparse.Namespace) -> int:
    import torch

    from qpass.eval import perplexity
    from qpass.job import token_slices
    from qpass.save import load

    for flag, paths in (("--saved", args.saved), ("--onnx", args.onnx)):
        for p in paths:
            if not p.exists():
                raise CliError(f"{flag} {str(p)!r} does not exist", EXIT_NOT_FOUND)
    if args.no_float and not (args.saved or args.onnx):
        raise CliError("nothing to evaluate: --no-float without --saved or --onnx", EXIT_USAGE)
    torch.set_num_threads(args.threads)
    loaded = load_any_model(args.model)
    if loaded.kind != "causal_lm":
        raise CliError(f"qpass eval measures perplexity of causal LMs; {loaded.name!r} is an "
                       f"{loaded.kind} (qpass quantize reports its output cosine similarity)",
                       EXIT_USAGE)
    window = args.window or 512
    _, evals = token_slices(loaded.tokenizer, None, args.eval_text, 2, args.windows, window)
    variants: list[tuple[str, object]] = [] if args.no_float else [("FP32 (torch)",
                                                                     loaded.module)]
    variants += [(f"{p} (torch)", load(p)) for p in args.saved]
    variants += [(f"{p} (ONNX Runtime)", p) for p in args.onnx]
    rows = []
    for name, model in variants:
        ppl = perplexity(model, evals, threads=args.threads, progress=not args.quiet)
        rows.append((name, ppl))
    base = rows[0][1]
    print()
    print_table(("variant", "PPL", f"Δ% vs {rows[0][0]}"),
                [(n, f"{v:.4f}", f"{100 * (v / base - 1):+.2f}") for n, v in rows])
    print(f"\n{len(evals)} windows of {window} tokens, {len(evals) * (window - 1)} predictions")
    return EXIT_OK
