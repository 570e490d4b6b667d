"""``python -m qpass.bench smollm2``: qpass's recipes against FP32 and ONNX Runtime's own
quantizers on a real LLM, measured side by side in one run.

For each row: perplexity of the torch model on held-out Wikipedia text, its ONNX export's
perplexity and logit parity against it, and ONNX Runtime CPU latency of one forward pass,
timed round-robin with every other row's session so machine noise hits all rows alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass

import onnx

import qpass
from qpass.bench_setup import add_protocol_args, bench_parser, bench_setup
from qpass.eval import perplexity
from qpass.eval.parity import Parity, compare, perturbed
from qpass.export.ort_baselines import ort_quantize_dynamic, ort_quantize_static
from qpass.export.ort_latency import measure_latency

log = logging.getLogger("qpass.bench")
RECIPES = ("w8a16", "w8a8_dynamic", "w8a8_static")
BENCH_MODELS = {"smollm2": "smollm2-135m"}


@dataclass
class Row:
    name: str
    onnx: str
    torch_ppl: float | None = None
    parity: Parity | None = None
    onnx_ppl: float | None = None
    latency_ms: float | None = None
    floor: Parity | None = None  # the torch model against itself with a 1-ulp input change
    seconds: float = 0.0


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser("qpass.bench", __doc__, BENCH_MODELS)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    p.add_argument("--repeats", type=int, default=5, help="timed forwards per session")
    p.add_argument("--no-ort-baselines", action="store_true")
    add_protocol_args(p, "bench")
    return p.parse_args(argv)


def _qpass_rows(a, gm, example, calib, evals) -> list[Row]:
    rows = []
    start = time.perf_counter()
    fp32 = Row("FP32", str(qpass.export_onnx(gm, example, a.out / "fp32.onnx")))
    fp32.parity = compare(gm, fp32.onnx, evals, threads=a.threads, progress=True)
    fp32.floor = compare(gm, perturbed(gm), evals, progress=True)
    fp32.torch_ppl, fp32.onnx_ppl = fp32.parity.reference_ppl, fp32.parity.candidate_ppl
    fp32.seconds = time.perf_counter() - start
    rows.append(fp32)
    batches = [(calib[i:i + 1],) for i in range(len(calib))]
    for recipe in a.recipes:
        start = time.perf_counter()
        q = qpass.quantize(gm, recipe, batches, example)
        row = Row(f"qpass {recipe}", str(qpass.export_onnx(q, example, a.out / f"{recipe}.onnx")))
        row.parity = compare(q, row.onnx, evals, threads=a.threads, progress=True)
        row.floor = compare(q, perturbed(q), evals, progress=True)
        row.torch_ppl, row.onnx_ppl = row.parity.reference_ppl, row.parity.candidate_ppl
        row.seconds = time.perf_counter() - start
        rows.append(row)
        del q
    return rows


def _ort_rows(a, fp32_onnx: str, calib, evals) -> list[Row]:
    calib_np = [calib[i:i + 1].numpy() for i in range(len(calib))]
    rows = [Row("ORT quantize_static (MinMax)",
                str(ort_quantize_static(fp32_onnx, a.out / "ort_static.onnx", calib_np))),
            Row("ORT quantize_dynamic", str(ort_quantize_dynamic(fp32_onnx,
                                                                   a.out / "ort_dynamic.onnx")))]
    for row in rows:
        row.onnx_ppl = perplexity(row.onnx, evals, threads=a.threads, progress=True)
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[Row], eager_vs_captured: Parity) -> None:
    base_ppl, base_ms = rows[0].torch_ppl, rows[0].latency_ms
    print(f"\neager FP32 PPL {eager_vs_captured.reference_ppl:.4f} | captured GraphModule PPL "
          f"{eager_vs_captured.candidate_ppl:.4f} | relative difference "
          f"{eager_vs_captured.ppl_rel_diff:.2e}\n")
    head = ("recipe", "PPL", "Δ% vs FP32", "ONNX PPL", "ONNX vs torch", "max|Δlogit|",
            "mean|Δlogit|", "argmax agree", "1-ulp floor", "ORT ms/fwd", "speed vs FP32")
    print("1-ulp floor: argmax agreement of the torch model with itself when its input "
          "activation is scaled by 1 + 2^-23\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        ppl = r.torch_ppl if r.torch_ppl is not None else r.onnx_ppl
        p = r.parity
        cells = (r.name, _fmt(ppl, ".3f"), _fmt(100 * (ppl / base_ppl - 1), "+.2f"),
                 _fmt(r.onnx_ppl, ".3f"),
                 "-" if p is None or r.torch_ppl is None else f"{100 * p.ppl_rel_diff:.3f}%",
                 _fmt(p and p.max_abs_diff, ".4f"), _fmt(p and p.mean_abs_diff, ".5f"),
                 "-" if p is None else f"{100 * p.argmax_agreement:.2f}%",
                 "-" if r.floor is None else f"{100 * r.floor.argmax_agreement:.2f}%",
                 _fmt(r.latency_ms, ".0f"),
                 _fmt(base_ms / r.latency_ms if r.latency_ms else None, ".2f") + "x")
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    b = bench_setup(a, BENCH_MODELS[a.model])
    loaded, calib, evals, example, gm = b.loaded, b.calib, b.evals, b.example, b.gm
    eager_vs_captured = compare(loaded.module, gm, evals, threads=a.threads, progress=True)
    rows = _qpass_rows(a, gm, example, calib, evals)
    if not a.no_ort_baselines:
        rows += _ort_rows(a, rows[0].onnx, calib, evals)
    input_name = onnx.load(rows[0].onnx, load_external_data=False).graph.input[0].name
    latency = measure_latency({r.name: r.onnx for r in rows}, {input_name: evals[:1].numpy()},
                              repeats=a.repeats, threads=a.threads)
    for r in rows:
        r.latency_ms = latency[r.name].median_s * 1e3
    print_table(rows, eager_vs_captured)
    results = {"rows": [asdict(r) for r in rows], "eager_vs_captured": asdict(eager_vs_captured),
               "args": {k: str(v) for k, v in vars(a).items()}}
    (a.out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
