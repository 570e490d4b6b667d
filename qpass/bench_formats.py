"""``python -m qpass.bench_formats smollm2``: every quantization format under every export
profile on a real LLM: does the file pass its profile's validator, does ONNX Runtime CPU load
it and reproduce the torch reference, and how large is it next to FP32.

Protocol of ``qpass.bench``: calibration on 8 windows of 512 tokens, evaluation on 12
windows of a disjoint part of the Wikipedia text. Each format is quantized once (the torch
reference) and exported once per profile. ``ort`` files run in ONNX Runtime as a user would
(``qpass.eval.ort.ort_session``, all graph optimizations). ``tensorrt`` files target TensorRT,
which is not on this machine; ONNX Runtime runs them as a reference interpreter with basic
graph optimizations only, since its CPU QDQ fusions are not TensorRT's (it cannot load float8
MatMuls fused its way, for one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import onnxruntime as ort
import torch
from torch import nn

import qpass
from qpass.bench_setup import add_protocol_args, bench_parser, bench_setup
from qpass.config import PerGroup
from qpass.eval.ort import ort_session
from qpass.eval.parity import Parity, compare, perturbed
from qpass.export import validate

log = logging.getLogger("qpass.bench_formats")
BENCH_MODELS = {"smollm2": "smollm2-135m"}
FORMATS = ("w8a8_static", "w8a8_dynamic", "w8a16", "w4a16_g64", "fp8_e4m3", "islands")
PROFILES = ("ort", "tensorrt")
ISLAND_FQNS = "*.mlp.down_proj"  # the layers with SmolLM2's massive activations


def _recipe(fmt: str) -> qpass.Recipe:
    """A built-in recipe, or ``islands``: w8a8_static with float islands left by the
    keep_float policy (every ``down_proj``); ``w4a16_g<n>``: w4a16_g128 with groups of n
    (SmolLM2's hidden size, 576, is not a multiple of 128)."""
    if fmt.startswith("w4a16_g") and fmt != "w4a16_g128":
        base = qpass.resolve_recipe("w4a16_g128")
        w = dataclasses.replace(base.precision.weight, granularity=PerGroup(int(fmt[7:])))
        return base.replace(name=fmt, precision=dataclasses.replace(base.precision, weight=w))
    if fmt != "islands":
        return qpass.resolve_recipe(fmt)
    base = qpass.resolve_recipe("w8a8_static")
    return base.replace(name="w8a8_static+float_down_proj",
                        keep_float=(*base.keep_float, ISLAND_FQNS))


class OrtLM(nn.Module):
    """An ONNX Runtime session as a module ``forward(ids) -> logits``, for ``compare``."""

    def __init__(self, session: ort.InferenceSession) -> None:
        super().__init__()
        self.session = session
        self.input = session.get_inputs()[0].name

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: ids.numpy()})[0])


def reference_session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@dataclass
class Row:
    format: str
    profile: str
    validator: str = "-"
    torch_ppl: float | None = None
    onnx_ppl: float | None = None
    parity: Parity | None = None
    floor: Parity | None = None
    size_mb: float | None = None
    size_vs_fp32: float | None = None
    note: str = ""
    seconds: float = 0.0


def _validator_cell(path: Path, profile: str) -> str:
    found = validate(path, profile)
    errors = sum(v.severity == "error" for v in found)
    warnings = len(found) - errors
    return "pass" if not found else f"{errors} errors, {warnings} warnings"


def _export_row(a, fmt, profile, q, example, evals, fp32_mb, floor) -> Row:
    row, start = Row(fmt, profile), time.perf_counter()
    path = a.out / f"{fmt}.{profile}.onnx"
    try:
        qpass.export_onnx(q, example, path, profile=profile)
    except ValueError as exc:  # the profile cannot express this format
        lines = str(exc).splitlines()
        row.note, row.validator = (lines[1] if len(lines) > 1 else lines[0]).strip("- "), "refused"
        return row
    except Exception as exc:  # record it and go on with the other rows
        log.exception("export of %s / %s failed", fmt, profile)
        row.note, row.validator = f"export failed: {type(exc).__name__}: {exc}"[:300], "failed"
        return row
    row.validator = _validator_cell(path, profile)
    session = (ort_session(path, a.threads) if profile == "ort"
               else reference_session(path, a.threads))
    row.parity = compare(q, OrtLM(session), evals, threads=a.threads, progress=True)
    row.torch_ppl, row.onnx_ppl = row.parity.reference_ppl, row.parity.candidate_ppl
    row.floor = floor
    row.size_mb = path.stat().st_size / 1e6
    row.size_vs_fp32 = row.size_mb / fp32_mb
    row.seconds = time.perf_counter() - start
    return row


def print_table(rows: list[Row], fp32_mb: float) -> None:
    print(f"\nFP32 ONNX file: {fp32_mb:.1f} MB\n")
    head = ("format", "profile", "validator", "torch PPL", "ORT PPL", "ORT vs torch",
            "argmax agree", "1-ulp floor", "max|Δlogit|", "file MB", "vs FP32", "note")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        p = r.parity
        cells = (r.format, r.profile, r.validator,
                 "-" if r.torch_ppl is None else f"{r.torch_ppl:.3f}",
                 "-" if r.onnx_ppl is None else f"{r.onnx_ppl:.3f}",
                 "-" if p is None else f"{100 * p.ppl_rel_diff:.3f}%",
                 "-" if p is None else f"{100 * p.argmax_agreement:.2f}%",
                 "-" if r.floor is None else f"{100 * r.floor.argmax_agreement:.2f}%",
                 "-" if p is None else f"{p.max_abs_diff:.4f}",
                 "-" if r.size_mb is None else f"{r.size_mb:.1f}",
                 "-" if r.size_vs_fp32 is None else f"{100 * r.size_vs_fp32:.1f}%", r.note)
        print("| " + " | ".join(cells) + " |")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser("qpass.bench_formats", __doc__, BENCH_MODELS)
    p.add_argument("--formats", nargs="+", default=list(FORMATS))
    p.add_argument("--profiles", nargs="+", default=list(PROFILES))
    add_protocol_args(p, "bench_formats")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    b = bench_setup(a, BENCH_MODELS[a.model])
    evals, example, gm, batches = b.evals, b.example, b.gm, b.batches
    fp32 = qpass.export_onnx(gm, example, a.out / "fp32.onnx")
    fp32_mb = fp32.stat().st_size / 1e6
    rows = []
    for fmt in a.formats:
        try:
            q = qpass.quantize(gm, _recipe(fmt), batches, example, progress=False)
        except ValueError as exc:  # e.g. a group size that does not divide a layer
            rows.append(Row(fmt, "-", "quantize failed", note=str(exc)[:300]))
            continue
        floor = compare(q, perturbed(q), evals, progress=True)
        for profile in a.profiles:
            rows.append(_export_row(a, fmt, profile, q, example, evals, fp32_mb, floor))
            log.info("%s / %s done: %s", fmt, profile, rows[-1])
            _write(a, rows, fp32_mb)
        del q
    print_table(rows, fp32_mb)
    return 0


def _write(a: argparse.Namespace, rows: list[Row], fp32_mb: float) -> None:
    (a.out / "results.json").write_text(json.dumps(
        {"fp32_mb": fp32_mb, "rows": [asdict(r) for r in rows],
         "args": {k: str(v) for k, v in vars(a).items()}}, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
