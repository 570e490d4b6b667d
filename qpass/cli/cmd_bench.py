"""``qpass bench``: ONNX Runtime latency of ONNX files, timed side by side in one run."""

from __future__ import annotations

import argparse
from pathlib import Path

from qpass.cli.common import EXIT_CODES_HELP, EXIT_NOT_FOUND, EXIT_OK, CliError, print_table

EXAMPLES = """examples:
  qpass bench exports/smollm2-135m-w8a8_dynamic.onnx exports/fp32.onnx
  qpass bench exports/*.onnx --window 128 --repeats 20

Every file gets the same inputs (integer inputs: token ids 1; float inputs: zeros; shape
[--batch, --window] for dynamic axes) and is timed round-robin with the others, so machine
noise hits all alike; the first file is the baseline of the speed column. For accuracy and
speed against FP32 and ONNX Runtime's own quantizers, run: python -m qpass.bench smollm2

""" + EXIT_CODES_HELP


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    q = sub.add_parser("bench", help="ONNX Runtime latency of ONNX files, side by side",
                       description="Median latency of one forward pass of each ONNX file.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("onnx", type=Path, nargs="+", help="ONNX files")
    q.add_argument("--window", type=int, default=512, help="sequence length (default: "
                   "%(default)s)")
    q.add_argument("--batch", type=int, default=1, help="batch size (default: %(default)s)")
    q.add_argument("--repeats", type=int, default=5, help="timed runs per file "
                   "(default: %(default)s)")
    q.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads "
                   "(default: %(default)s)")
    return q


def feeds_for(paths: list[Path], batch: int, window: int) -> dict:
    """One input array per input name of any file; dynamic axes get [batch, window]."""
    import numpy as np
    import onnx

    kinds = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32,
             onnx.TensorProto.FLOAT: np.float32}
    feeds = {}
    for path in paths:
        for inp in onnx.load(str(path), load_external_data=False).graph.input:
            t = inp.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            shape = [d if d is not None else (batch if i == 0 else window)
                     for i, d in enumerate(dims)]
            dtype = kinds.get(t.elem_type, np.float32)
            fill = 1 if np.issubdtype(dtype, np.integer) else 0
            feeds.setdefault(inp.name, np.full(shape, fill, dtype=dtype))
    return feeds


def run(args: argparse.Namespace) -> int:
    from qpass.export.ort_latency import measure_latency

    for p in args.onnx:
        if not p.is_file():
            raise CliError(f"ONNX file {str(p)!r} does not exist", EXIT_NOT_FOUND)
    feeds = feeds_for(args.onnx, args.batch, args.window)
    stats = measure_latency({str(p): p for p in args.onnx}, feeds, repeats=args.repeats,
                            threads=args.threads)
    base = stats[str(args.onnx[0])].median_s
    print()
    print_table(("ONNX file", "median ms", "p10 ms", "p90 ms", "speed vs first"), [
        (name, f"{s.median_s * 1e3:.1f}", f"{s.p10_s * 1e3:.1f}", f"{s.p90_s * 1e3:.1f}",
         f"{base / s.median_s:.2f}x") for name, s in stats.items()])
    print(f"\n{args.repeats} timed runs each, batch {args.batch}, {args.window} tokens, "
          f"{args.threads} threads")
    return EXIT_OK
