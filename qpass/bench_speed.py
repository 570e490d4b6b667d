"""``python -m qpass.bench_speed smollm2``: ONNX Runtime CPU speed of qpass's exports against
FP32 and ONNX Runtime's own quantizers, every row timed side by side in one run.

Rows: the FP32 model as ``torch.onnx`` writes it (the baseline users have), the FP32 model
through qpass's ``ort`` profile (its attention cleanup only, to separate that from
quantization), qpass's recipes (``--recipes``; ``w8a8_dynamic`` also with ``lm_head`` in int8,
a policy choice, and ``w4a16_g128`` also at ONNX Runtime's MatMulNBits accuracy level 4, which
quantizes activations on the fly), and ``quantize_static`` / ``quantize_dynamic`` of ONNX
Runtime. For each: file size, perplexity of the ONNX file in ONNX Runtime on held-out text,
and the latency of one forward of ``--window`` tokens, round-robin with every other row so
machine noise hits all rows alike. Median wall time is the figure to quote on a quiet machine;
CPU time (all threads) is steadier on a shared one. ``--reuse`` keeps exported files and only
measures again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch

import qpass
from qpass.bench_setup import add_protocol_args, bench_parser, bench_setup
from qpass.eval.ort import ort_session
from qpass.eval.perplexity import window_nll
from qpass.export.ort_baselines import ort_quantize_dynamic, ort_quantize_static
from qpass.export.ort_latency import LatencyStats, measure_latency
from qpass.recipes import RECIPES

log = logging.getLogger("qpass.bench_speed")
BENCH_MODELS = {"smollm2": "smollm2-135m"}
FP32 = "FP32 (torch.onnx)"


@dataclasses.dataclass
class SpeedRow:
    name: str
    onnx: str
    nbits_accuracy_level: int = 1
    size_mb: float = 0.0
    ppl: float | None = None
    latency: LatencyStats | None = None


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser("qpass.bench_speed", __doc__, BENCH_MODELS)
    p.add_argument("--recipes", nargs="+", default=["w8a8_dynamic", "w4a16_g128"])
    p.add_argument("--repeats", type=int, default=10, help="timed forwards per row")
    p.add_argument("--no-ort-baselines", action="store_true")
    p.add_argument("--reuse", action="store_true", help="keep ONNX files already in --out")
    add_protocol_args(p, "bench_speed")
    return p.parse_args(argv)


def _cached(a: argparse.Namespace, name: str, make: Callable[[Path], object]) -> str:
    path = a.out / name
    if not (a.reuse and path.is_file()):
        make(path)
    return str(path)


def _variants(recipe: str) -> list[tuple[str, qpass.Recipe]]:
    """The recipe, plus its int8 ``lm_head`` variant for activation-quantized recipes."""
    base = RECIPES.get(recipe)
    out = [(f"qpass {recipe}", base)]
    if base.precision.activation is not None and any("lm_head" in g for g in base.keep_float):
        keep = tuple(g for g in base.keep_float if "lm_head" not in g)
        out.append((f"qpass {recipe} + int8 lm_head",
                    dataclasses.replace(base, name=f"{recipe}_lm_head", keep_float=keep)))
    return out


def build_rows(a: argparse.Namespace, gm: torch.nn.Module, example: tuple,
               calib: torch.Tensor) -> list[SpeedRow]:
    """Export (or reuse) every row's ONNX file."""
    rows = [SpeedRow(FP32, _cached(a, "fp32.onnx", lambda p: qpass.export_onnx(
                gm, example, p, profile="plain"))),
            SpeedRow("FP32 (qpass ort profile)", _cached(
                a, "fp32_ort.onnx", lambda p: qpass.export_onnx(gm, example, p)))]
    batches = [(calib[i:i + 1],) for i in range(len(calib))]
    for recipe in a.recipes:
        for name, rec in _variants(recipe):
            path = _cached(a, f"{rec.name}.onnx", lambda p, rec=rec: qpass.export_onnx(
                qpass.quantize(gm, rec, batches, example, progress=False), example, p))
            rows.append(SpeedRow(name, path))
            if rec.precision.activation is None and rec.precision.weight.format in (
                    "int4", "uint4"):
                rows.append(SpeedRow(f"{name} (ORT accuracy_level 4)", path, 4))
    if not a.no_ort_baselines:
        calib_np = [b[0].numpy() for b in batches]
        rows.append(SpeedRow("ORT quantize_static", _cached(
            a, "ort_static.onnx", lambda p: ort_quantize_static(rows[0].onnx, p, calib_np))))
        rows.append(SpeedRow("ORT quantize_dynamic", _cached(
            a, "ort_dynamic.onnx", lambda p: ort_quantize_dynamic(rows[0].onnx, p))))
    return rows


def _size_mb(path: str) -> float:
    p = Path(path)
    data = p.with_name(p.name + ".data")
    return (p.stat().st_size + (data.stat().st_size if data.exists() else 0)) / 1e6


def _ppl(session: ort.InferenceSession, evals: torch.Tensor) -> float:
    name = session.get_inputs()[0].name
    total, count = 0.0, 0
    for ids in evals:
        logits = torch.from_numpy(session.run(None, {name: ids[None].numpy()})[0])
        nll, n = window_nll(logits, ids)
        total, count = total + nll, count + n
    return math.exp(total / count)


def measure(a: argparse.Namespace, rows: list[SpeedRow], evals: torch.Tensor) -> None:
    sessions = {r.name: ort_session(r.onnx, a.threads, nbits_accuracy_level=r.nbits_accuracy_level)
                for r in rows}
    for r in rows:
        r.size_mb = _size_mb(r.onnx)
        r.ppl = _ppl(sessions[r.name], evals)
        log.info("%s: %.1f MB, ONNX PPL %.4f", r.name, r.size_mb, r.ppl)
    name = sessions[FP32].get_inputs()[0].name
    stats = measure_latency(sessions, {name: evals[:1].numpy()}, repeats=a.repeats,
                            threads=a.threads)
    for r in rows:
        r.latency = stats[r.name]


def table(rows: list[SpeedRow]) -> str:
    base = next(r for r in rows if r.name == FP32)
    static = next((r for r in rows if r.name == "ORT quantize_static"), None)
    head = ("row", "MB", "ONNX PPL", "Δ% PPL", "ms/fwd (median)", "p10", "CPU ms",
            "× FP32 (wall)", "× FP32 (CPU)", "× ORT static (wall)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s = r.latency
        vs_static = "-" if static is None else f"{static.latency.median_s / s.median_s:.2f}x"
        lines.append("| " + " | ".join((
            r.name, f"{r.size_mb:.0f}", f"{r.ppl:.3f}", f"{100 * (r.ppl / base.ppl - 1):+.2f}",
            f"{s.median_s * 1e3:.0f}", f"{s.p10_s * 1e3:.0f}", f"{s.cpu_median_s * 1e3:.0f}",
            f"{base.latency.median_s / s.median_s:.2f}x",
            f"{base.latency.cpu_median_s / s.cpu_median_s:.2f}x", vs_static)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    b = bench_setup(a, BENCH_MODELS[a.model])
    calib, evals, example, gm = b.calib, b.evals, b.example, b.gm
    rows = build_rows(a, gm, example, calib)
    measure(a, rows, evals)
    text = table(rows)
    print(f"\nONNX Runtime {ort.__version__}, {a.threads} threads, one forward of "
          f"{a.window} tokens, {a.repeats} timed rounds; PPL on {len(evals)}x{a.window} "
          "held-out tokens\n")
    print(text)
    (a.out / "results.json").write_text(json.dumps(
        {"rows": [dataclasses.asdict(r) for r in rows],
         "args": {k: str(v) for k, v in vars(a).items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
