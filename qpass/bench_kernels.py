"""Benchmark qpass's CUDA kernels against fp16 cuBLAS (``torch.matmul``) on Llama-7B/8B
linear shapes, and a Llama-architecture model end to end. Needs a CUDA GPU.

    python -m qpass.bench_kernels                 # kernels, then the model (4 layers)
    python -m qpass.bench_kernels --skip-model --m 1 2048

For each (M, K, N) and kernel: median time (triton.testing.do_bench, L2 flushed between
runs), TFLOP/s (2MNK / t), GB/s (x, weight, scales and y bytes / t), speedup over fp16
``torch.matmul`` at the same shape, and the fraction of the roofline (compute peak of the
kernel's operand type, or HBM bandwidth, whichever bounds it; peaks in
``qpass.lower.roofline``). Each kernel's timing covers the whole linear it replaces
(activation quantization included). The model rows: a transformers ``LlamaConfig`` with
Llama-2-7B layer shapes and random fp16 weights, captured, quantized with each recipe,
lowered with ``backend="cuda"``; prefill (1 x seq tokens) and one decode step (1 token,
no KV cache: the linears run as M = 1 GEMVs). Results go to exports/bench/kernels.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (4096, 14336)]  # (K, N)
MS = [1, 16, 256, 2048]
OUTLIER_FRACTION = 0.001  # LLM.int8() columns kept in float


@dataclass(frozen=True)
class Case:
    label: str
    kernel: str
    weight: dict  # QuantSpec fields
    act: str | None  # activation format, per token; None: weight-only
    compute: str  # "fp16", "int8" or "fp8": whose peak bounds it
    outliers: bool = False


CASES = [
    Case("W8A8 int8 (triton)", "w8a8_int8.triton", {"format": "int8"}, "int8", "int8"),
    Case("W8A8 int8 (_int_mm)", "w8a8_int8.int_mm", {"format": "int8"}, "int8", "int8"),
    Case("W8A8 fp8 e4m3", "w8a8_fp8.scaled_mm", {"format": "fp8_e4m3"}, "fp8_e4m3", "fp8"),
    Case("W4A16 g128", "weight_only.triton", {"format": "int4", "group": 128}, None, "fp16"),
    Case("W8A16", "weight_only.triton", {"format": "int8"}, None, "fp16"),
    Case("LLM.int8() 0.1%", "llm_int8.triton", {"format": "int8"}, "int8", "int8", True),
]


@dataclass(frozen=True)
class Row:
    m: int
    k: int
    n: int
    kernel: str
    ms: float
    tflops: float
    gbps: float
    speedup: float | None
    roofline: float | None


def _site(case: Case, k: int, n: int):
    from qpass.config import PerChannel, PerGroup, QuantSpec
    from qpass.convert.weights import quantize_weight
    from qpass.lower.pattern import ActQuant, OutlierSplit, QLinear

    gran = PerGroup(case.weight["group"]) if "group" in case.weight else PerChannel(0)
    w = torch.randn(n, k, device="cuda") / k**0.5
    qw = quantize_weight(w, QuantSpec(case.weight["format"], granularity=gran))
    act = None if case.act is None else ActQuant(case.act, True, True)
    outliers = None
    if case.outliers:
        cols = torch.randperm(k, device="cuda")[: max(1, round(k * OUTLIER_FRACTION))]
        keep = torch.ones(k, device="cuda")
        keep[cols] = 0
        outliers = OutlierSplit(keep, cols, torch.randn(len(cols), n, device="cuda"))
    return QLinear("bench", "bench", None, act, qw, None, None, "matmul", outliers)


def _bytes(w: dict[str, torch.Tensor], m: int, k: int, n: int) -> int:
    return m * k * 2 + m * n * 2 + sum(t.numel() * t.element_size() for t in w.values())


def bench_linears(ms: list[int], shapes: list[tuple[int, int]], peaks) -> list[Row]:
    from triton.testing import do_bench

    from qpass.lower import KERNELS
    from qpass.lower.roofline import roofline_seconds

    rows = []
    for k, n in shapes:
        w16 = torch.randn(k, n, device="cuda", dtype=torch.float16)
        built = [(c, KERNELS.get(c.kernel)(), _site(c, k, n)) for c in CASES]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            base = do_bench(lambda x=x, w16=w16: torch.matmul(x, w16), return_mode="median")
            rows.append(_row(m, k, n, "fp16 torch.matmul", base, (k * n + m * k + m * n) * 2,
                             base, "fp16", peaks, roofline_seconds))
            for case, kernel, site in built:
                if (why := kernel.why_not(site)) is not None:
                    print(f"skip {case.label} at K={k} N={n}: {why}", file=sys.stderr)
                    continue
                w = kernel.pack(site)
                out = torch.empty(m, n, device="cuda", dtype=torch.float16)
                t = do_bench(lambda x=x, w=w, out=out, kernel=kernel: kernel.run(x, w, None, out),
                             return_mode="median")
                rows.append(_row(m, k, n, case.label, t, _bytes(w, m, k, n), base, case.compute,
                                 peaks, roofline_seconds))
    return rows


def _row(m, k, n, label, ms, nbytes, base_ms, compute, peaks, roofline_seconds) -> Row:
    s = ms * 1e-3
    roof = None if peaks is None else roofline_seconds(2 * m * k * n, nbytes, compute, peaks) / s
    return Row(m, k, n, label, ms, 2 * m * k * n / s / 1e12, nbytes / s / 1e9, base_ms / ms,
               roof)


def print_rows(rows: list[Row]) -> None:
    print("| M | K | N | kernel | ms | TFLOP/s | GB/s | vs fp16 | roofline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        roof = "-" if r.roofline is None else f"{100 * r.roofline:.0f}%"
        print(f"| {r.m} | {r.k} | {r.n} | {r.kernel} | {r.ms:.4f} | {r.tflops:.1f} | "
              f"{r.gbps:.0f} | {r.speedup:.2f}x | {roof} |")


ACCEPTANCE = [("W8A8 int8 (triton)", 2048, 1.6), ("W8A8 int8 (_int_mm)", 2048, 1.6),
              ("W8A8 fp8 e4m3", 2048, 1.5), ("W4A16 g128", 1, 2.5), ("LLM.int8() 0.1%", None, 0.8)]


def print_acceptance(rows: list[Row]) -> None:
    """The issue's speed targets, as the worst speedup over the four Llama shapes."""
    for label, m, target in ACCEPTANCE:
        sel = [r for r in rows if r.kernel == label and (m is None or r.m == m)]
        if sel:
            worst = min(sel, key=lambda r: r.speedup)
            verdict = "meets" if worst.speedup >= target else "MISSES"
            print(f"{label} at M={m or 'any'}: worst {worst.speedup:.2f}x (K={worst.k}, "
                  f"N={worst.n}, M={worst.m}) {verdict} the {target}x target")


LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096}
MODEL_RECIPES = ["w8a8_dynamic", "w8a16"]


def bench_model(layers: int, seq: int) -> list[dict]:
    """Prefill and decode-step latency of a Llama-7B-shaped model, fp16 vs each recipe."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from triton.testing import do_bench

    import qpass
    from qpass.eval.models import CausalLMLogits

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=layers, **LLAMA_7B)
    with torch.device("cuda"):
        model = CausalLMLogits(LlamaForCausalLM(config).half().eval())
    results = []
    for phase, tokens in (("prefill", seq), ("decode step", 1)):
        ids = torch.randint(0, config.vocab_size, (1, tokens), device="cuda")
        with torch.no_grad():
            gm = qpass.capture(model, (ids,))
            base = do_bench(lambda gm=gm, ids=ids: gm(ids), return_mode="median")
            results.append({"phase": phase, "tokens": tokens, "variant": "fp16", "ms": base,
                            "speedup": 1.0})
            for recipe in MODEL_RECIPES:
                try:
                    q = qpass.quantize(gm, recipe, [], (ids,), progress=False)
                    low = qpass.lower(q, backend="cuda")
                    t = do_bench(lambda low=low, ids=ids: low(ids), return_mode="median")
                    kernels = low.meta["qpass"].reports["lower"].kernels()
                    results.append({"phase": phase, "tokens": tokens, "variant": recipe,
                                    "ms": t, "speedup": base / t, "kernels": kernels})
                except Exception as exc:  # report it and go on with the other rows
                    results.append({"phase": phase, "tokens": tokens, "variant": recipe,
                                    "error": f"{type(exc).__name__}: {exc}"})
    return results


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qpass.bench_kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--m", type=int, nargs="+", default=MS, help="token counts M")
    p.add_argument("--skip-model", action="store_true", help="kernels only")
    p.add_argument("--layers", type=int, default=4, help="decoder layers of the model")
    p.add_argument("--seq", type=int, default=2048, help="prefill tokens")
    p.add_argument("--out", type=Path, default=Path("exports/bench/kernels.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if not torch.cuda.is_available():
        print("qpass.bench_kernels needs a CUDA GPU (it times CUDA kernels); none is visible "
              "here. Run it on a machine with an NVIDIA GPU and `pip install 'qpass[gpu]'`.",
              file=sys.stderr)
        return 2
    from qpass.lower.roofline import peaks_for

    device = torch.cuda.get_device_name()
    peaks = peaks_for(device)
    print(f"device: {device}; peaks: {peaks or 'unknown (no roofline column)'}")
    rows = bench_linears(args.m, SHAPES, peaks)
    print_rows(rows)
    print_acceptance(rows)
    model = [] if args.skip_model else bench_model(args.layers, args.seq)
    for r in model:
        print(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": device, "linears": [asdict(r) for r in rows],
                                    "model": model}, indent=1))
    return 1 if any("error" in r for r in model) else 0


if __name__ == "__main__":
    sys.exit(main())
