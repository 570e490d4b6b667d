"""``python -m qpass.bench_gptq smollm2``: 4- and 3-bit weight-only quantization of a real LLM
with round-to-nearest, GPTQ, AWQ and AWQ then GPTQ, side by side in one run.

For each bit width x weight granularity (groups of 128 input features, or one scale per output
channel) x method: perplexity on held-out Wikipedia text (the protocol of ``qpass.bench``:
calibrate on 8 x 512 tokens, evaluate on 12 x 512 disjoint tokens), and the wall time and peak
RSS increase of each pass. The weights are asymmetric integers (a zero point per group), the
usual setting of GPTQ and AWQ checkpoints. ``--onnx`` also exports the 4-bit g128 GPTQ model
and compares ONNX Runtime with torch. ``--depth`` runs GPTQ and AWQ on the model cut to fewer
layers, to show that their memory does not grow with depth.

Timings are wall-clock on whatever else the machine runs: compare rows of one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx as fx

import qpass
from qpass.bench_observers import PeakRSS, release_memory
from qpass.bench_setup import add_protocol_args, bench_parser, bench_setup
from qpass.config import LayerPrecision, PerChannel, PerGroup, QuantSpec, Recipe
from qpass.eval import perplexity
from qpass.passes import PassContext, run_passes
from qpass.transform.awq import AWQ
from qpass.transform.gptq import GPTQ

log = logging.getLogger("qpass.bench_gptq")
BENCH_MODELS = {"smollm2": "smollm2-135m"}
PLAIN = {"attention_values": False, "residual_weighted": False}  # AWQ's default
METHODS: dict[str, tuple[Any, ...]] = {
    "rtn": (), "gptq": (GPTQ(),), "awq": (AWQ(),), "awq+gptq": (AWQ(), GPTQ()),
    # the textbook Hessian XᵀX for every layer (see qpass.transform.site_hessians)
    "gptq_plain": (GPTQ(**PLAIN),),
    "awq_weighted": (AWQ(attention_values=True, residual_weighted=True, clip_select=1),),
    "gptq_act_order": (GPTQ(act_order=True),),
    "gptq_float_inputs": (GPTQ(sequential=False),),
    "gptq_damp0.3": (GPTQ(percdamp=0.3, shrinkage=0.0),),  # isotropic damping alone
    "gptq_no_shrinkage": (GPTQ(shrinkage=0.0),),
    # awq_own_output, awq_joint_clip: AWQ's clip search before it searched each bound
    "awq_own_output": (AWQ(inspect=False, clip_separate=False, clip_grid=20,
                             clip_select=1),),
    "awq_joint_clip": (AWQ(clip_separate=False, clip_grid=20, clip_select=1),),
    "awq_clip_separate20": (AWQ(clip_grid=20, clip_select=1),),
    "awq_clip80": (AWQ(clip_grid=80, clip_select=1),),
    "awq_grid40": (AWQ(grid=40, clip_select=1),),
    "awq_no_duo": (AWQ(duo_scaling=False, clip_select=1),),
    "awq_clip_select1": (AWQ(clip_select=1),),
    "awq_twice": (AWQ(clip_grid=20, clip_select=1), AWQ(clip_grid=20, clip_select=1)),
    "gptq_textbook_target": (GPTQ(asymmetric=0.0),),  # each layer aimed at its own weights
    **{f"gptq_asym{a}": (GPTQ(asymmetric=a),) for a in (0.125, 0.5, 1.0)}}
DEFAULT_METHODS = ("rtn", "gptq", "awq", "awq+gptq")
GRANULARITIES = {"g128": PerGroup(128), "channel": PerChannel(0)}


@dataclass
class Row:
    bits: int
    granularity: str
    method: str
    ppl: float | None = None
    pass_seconds: dict[str, float] = field(default_factory=dict)
    pass_peak_mib: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def weight_only_recipe(bits: int, granularity: str, passes: tuple[Any, ...] = ()) -> Recipe:
    spec = QuantSpec(f"int{bits}", symmetric=False, granularity=GRANULARITIES[granularity])
    return Recipe(f"w{bits}a16_{granularity}", LayerPrecision(spec, reason="bench_gptq"),
                  passes=passes)


def quantize_measured(gm: fx.GraphModule, recipe: Recipe, example: tuple, batches: list,
                      row: Row) -> fx.GraphModule:
    """``qpass.quantize`` for a weight-only recipe, with each pass timed and its peak RSS
    increase measured on its own (prepare without passes, then the passes as prepare runs
    them, then convert)."""
    prepared = qpass.prepare(gm, recipe.replace(passes=()), example, progress=False)
    state = prepared.meta["qpass"]
    ctx = PassContext(recipe, batches, state.precisions, progress=True)
    for p in recipe.passes:
        name = type(p).__name__
        release_memory()
        start = time.perf_counter()
        with PeakRSS() as mem:
            prepared = run_passes(prepared, "weights", PassContext(
                recipe.replace(passes=(p,)), batches, state.precisions, True,
                ctx.reports, ctx.quantized_weights))
        row.pass_seconds[name] = time.perf_counter() - start
        row.pass_peak_mib[name] = mem.increase / 2**20
    state.quantized_weights = ctx.quantized_weights
    state.reports["passes"] = ctx.reports
    return qpass.convert(prepared)


def truncated(module: torch.nn.Module, layers: int) -> torch.nn.Module:
    """A copy of a Llama-style causal LM adapter keeping its first ``layers`` decoder layers."""
    m = copy.deepcopy(module)
    hf = m.model
    hf.model.layers = hf.model.layers[:layers]
    hf.config.num_hidden_layers = layers
    if getattr(hf.config, "layer_types", None):
        hf.config.layer_types = hf.config.layer_types[:layers]
    return m


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser("qpass.bench_gptq", __doc__, BENCH_MODELS)
    p.add_argument("--bits", nargs="+", type=int, default=[4, 3], choices=[3, 4, 8])
    p.add_argument("--granularity", nargs="+", default=list(GRANULARITIES),
                   choices=list(GRANULARITIES))
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    p.add_argument("--onnx", action="store_true", help="export 4-bit g128 GPTQ, compare ORT")
    p.add_argument("--depth", nargs="*", type=int, default=[],
                   help="also measure GPTQ/AWQ peak memory with the model cut to these depths")
    add_protocol_args(p, "bench_gptq")
    return p.parse_args(argv)


def _rows(a, gm, example, batches, evals) -> list[Row]:
    rows = []
    for bits in a.bits:
        for gran in a.granularity:
            for method in a.methods:
                row = Row(bits, gran, method)
                start = time.perf_counter()
                q = quantize_measured(gm, weight_only_recipe(bits, gran, METHODS[method]),
                                      example, batches, row)
                row.ppl = perplexity(q, evals, a.window, progress=True)
                row.seconds = time.perf_counter() - start
                log.info("w%d %s %s: PPL %.3f", bits, gran, method, row.ppl)
                rows.append(row)
                del q
    return rows


def _onnx(a, gm, example, batches, evals) -> dict[str, Any]:
    from qpass.eval.parity import compare

    row = Row(4, "g128", "gptq")
    q = quantize_measured(gm, weight_only_recipe(4, "g128", (GPTQ(),)), example, batches, row)
    try:
        path = qpass.export_onnx(q, example, a.out / "w4a16_g128_gptq.onnx")
    except Exception as exc:  # report the failure in the table instead of losing the run
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    parity = compare(q, str(path), evals, threads=a.threads, progress=True)
    return {"path": str(path), "bytes": path.stat().st_size, **asdict(parity),
            "ppl_rel_diff": parity.ppl_rel_diff}  # a property: asdict leaves it out


def _depth(a, loaded, example, batches) -> list[dict[str, Any]]:
    out = []
    for layers in a.depth:
        gm = qpass.capture(truncated(loaded.module, layers), example)
        for method in ("gptq", "awq"):
            row = Row(4, "g128", method)
            release_memory()
            quantize_measured(gm, weight_only_recipe(4, "g128", METHODS[method]), example,
                              batches, row)
            params = sum(t.numel() for t in gm.state_dict().values())
            out.append({"layers": layers, "method": method, "params": params,
                        "peak_mib": next(iter(row.pass_peak_mib.values())),
                        "seconds": next(iter(row.pass_seconds.values()))})
            log.info("depth %d %s: %s", layers, method, out[-1])
        del gm
    return out


def print_tables(rows: list[Row], fp32: float, onnx: dict | None, depth: list[dict]) -> None:
    print(f"\nFP32 PPL {fp32:.3f}\n")
    print("| bits | weights | method | PPL | Δ% vs FP32 | loss cut vs RTN | pass time (s) | "
          "pass peak RSS + (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    rtn = {(r.bits, r.granularity): r.ppl for r in rows if r.method == "rtn"}
    for r in rows:
        base = rtn.get((r.bits, r.granularity))
        cut = "-" if base is None or r.method == "rtn" or base <= fp32 else \
            f"{100 * (1 - (r.ppl - fp32) / (base - fp32)):.0f}%"
        secs = ", ".join(f"{k} {v:.0f}" for k, v in r.pass_seconds.items()) or "-"
        mem = ", ".join(f"{k} {v:.0f}" for k, v in r.pass_peak_mib.items()) or "-"
        print(f"| {r.bits} | {r.granularity} | {r.method} | {r.ppl:.3f} | "
              f"{100 * (r.ppl / fp32 - 1):+.2f} | {cut} | {secs} | {mem} |")
    if onnx is not None:
        if "error" in onnx:
            print(f"\nONNX export of w4 g128 GPTQ failed: {onnx['error']}")
        else:
            print(f"\nONNX w4 g128 GPTQ: torch PPL {onnx['reference_ppl']:.4f}, ONNX Runtime "
                  f"PPL {onnx['candidate_ppl']:.4f} ({100 * onnx['ppl_rel_diff']:.4f}%), "
                  f"argmax agreement {100 * onnx['argmax_agreement']:.2f}%, file "
                  f"{onnx['bytes'] / 2**20:.1f} MiB")
    if depth:
        print("\n| decoder layers | parameters | pass | peak RSS + (MiB) | time (s) |")
        print("|---|---|---|---|---|")
        for d in depth:
            print(f"| {d['layers']} | {d['params'] / 1e6:.1f} M | {d['method']} | "
                  f"{d['peak_mib']:.0f} | {d['seconds']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    b = bench_setup(a, BENCH_MODELS[a.model])
    loaded, evals, example, gm = b.loaded, b.evals, b.example, b.gm
    batches = b.batches
    fp32 = perplexity(gm, evals, a.window, progress=True)
    rows = _rows(a, gm, example, batches, evals)
    onnx = _onnx(a, gm, example, batches, evals) if a.onnx else None
    depth = _depth(a, loaded, example, batches) if a.depth else []
    (a.out / "results.json").write_text(json.dumps(
        {"fp32_ppl": fp32, "rows": [asdict(r) for r in rows], "onnx": onnx, "depth": depth,
         "args": {k: str(v) for k, v in vars(a).items()}}, indent=2))
    print_tables(rows, fp32, onnx, depth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
