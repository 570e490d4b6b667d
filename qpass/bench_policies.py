"""``python -m qpass.bench_policies smollm2``: precision policies on a real LLM, side by side.

Same protocol as ``qpass.bench`` (calibration 8x512 tokens, evaluation 12x512 tokens of a
disjoint part of the Wikipedia text). Rows (``--rows`` picks some):

- ``fp32``, ``w8a8_dynamic``, ``w8a8_static``: the references;
- ``llm_int8_static`` / ``llm_int8_dynamic``: LLM.int8() (threshold ``--threshold``) on
  ``w8a8_dynamic``; the fraction of input columns kept float; with ``--onnx`` also the ONNX
  export's perplexity in ONNX Runtime;
- ``w8a8_static_sensitivity``: ``w8a8_static`` plus the sensitivity policy keeping the worst
  layers float within ``--budget`` of the quantized linears' weights. ``--validate N``
  checks its linearized score against quantizing each of N sites alone (one forward each);
- ``w8a8_dynamic_smoothquant``: ``w8a8_dynamic`` after SmoothQuant with α searched per group;
- ``w8a8_static_smoothquant``: ``w8a8_static`` with the ``--observer`` activation observer,
  after SmoothQuant with α searched per group (or one global ``--alpha``; every smoothquant
  row takes it), plus the sensitivity policy within ``--budget``;
- ``w8a8_static_smoothquant_llm_int8``: the same static per-tensor activations after
  SmoothQuant, with a static LLM.int8() split (``--threshold``; the int8 part's range is
  calibrated without the outlier columns) and the sensitivity policy within ``--split-budget``;
- ``w8a8_static_llm_int8``: the same without SmoothQuant, which would move the outliers out of
  the columns the split looks for;
- ``w8a8_static_rotated``: the built-in recipe as it is (static per-tensor int8 with a sink
  token scale, SmoothQuant alpha 0.5, Hadamard-rotated ``down_proj`` inputs); the options
  below do not change it.

``--hadamard BLOCK`` rotates every ``down_proj`` input (``HadamardRotate``, after SmoothQuant;
an LLM.int8() split then looks for its columns in the rotated inputs). ``--sink-tokens N``
gives the first N tokens of every window their own static activation scale in the static rows
without a split (``QuantSpec.sink_tokens``). ``--float-activations GLOB`` keeps the
activations of the matching linears float (weights int8) in every row but the presets: where a
row's loss comes from.

The float weight fraction counts float sites and the outlier columns' weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.fx as fx

import qpass
from qpass.bench import BENCH_MODELS
from qpass.bench_observers import observer_recipe
from qpass.bench_setup import add_protocol_args, bench_parser, bench_setup
from qpass.config import LayerPrecision
from qpass.eval import perplexity
from qpass.eval.parity import compare
from qpass.policies import LlmInt8, Sensitivity
from qpass.policies.rules import Rule, Rules
from qpass.policies.simulate import simulated_matmul
from qpass.quantizable import canonical_weight, find_sites
from qpass.transform.hadamard import HadamardRotate
from qpass.transform.smoothquant import SmoothQuant

log = logging.getLogger("qpass.bench_policies")
ROWS = ("fp32", "w8a8_dynamic", "llm_int8_static", "llm_int8_dynamic", "w8a8_static",
        "w8a8_static_sensitivity", "w8a8_dynamic_smoothquant", "w8a8_static_smoothquant",
        "w8a8_static_smoothquant_llm_int8", "w8a8_static_llm_int8", "w8a8_static_rotated")
ONNX_ROWS = ("llm_int8_static", "llm_int8_dynamic", "w8a8_dynamic_smoothquant",
             "w8a8_static_smoothquant", "w8a8_static_smoothquant_llm_int8",
             "w8a8_static_llm_int8", "w8a8_static_rotated")  # with --onnx
PRESETS = ("w8a8_static_rotated",)  # built-in recipes as they are: no option changes them


@dataclass
class Row:
    name: str
    ppl: float
    quantize_s: float = 0.0
    float_weight_fraction: float | None = None  # of the linears' weights, lm_head excluded
    float_column_fraction: float | None = None
    onnx_ppl: float | None = None
    onnx_rel_diff: float | None = None


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser("qpass.bench_policies", __doc__, BENCH_MODELS)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--threshold", type=float, default=6.0)
    p.add_argument("--budget", type=float, default=0.05)
    p.add_argument("--split-budget", type=float, default=0.03,
                   help="sensitivity budget of w8a8_static_smoothquant_llm_int8, whose outlier "
                        "columns keep more of the weights float")
    p.add_argument("--observer", default="percentile_99.99",
                   help="activation observer of w8a8_static_smoothquant")
    p.add_argument("--probes", type=int, default=8)
    p.add_argument("--alpha", type=float, default=None,
                   help="one global SmoothQuant alpha for the smoothquant rows (default: searched "
                        "per group)")
    p.add_argument("--sink-tokens", type=int, default=0,
                   help="give the first N tokens of every window their own static activation "
                        "scale (w8a8_static, _sensitivity and _smoothquant rows)")
    p.add_argument("--hadamard", type=int, default=0, metavar="BLOCK",
                   help="rotate every down_proj input with Hadamard blocks of BLOCK (after "
                        "SmoothQuant; LLM.int8() then looks for outlier columns after it)")
    p.add_argument("--float-activations", metavar="GLOB",
                   help="keep the activations of the linears matching GLOB float (weights "
                        "int8), e.g. '*.mlp.down_proj': where a row's loss comes from")
    p.add_argument("--onnx", action="store_true",
                   help="export the llm_int8 and smoothquant rows, run them in ONNX Runtime")
    p.add_argument("--validate", type=int, default=0, metavar="N")
    add_protocol_args(p, "bench_policies")
    return p.parse_args(argv)


def _recipe(name: str, a: argparse.Namespace) -> qpass.Recipe:
    if name in PRESETS:
        return qpass.resolve_recipe(name)
    recipe = _base_recipe(name, a)
    if a.hadamard:
        recipe = recipe.replace(passes=(*recipe.passes, HadamardRotate(block=a.hadamard)))
    if a.float_activations:  # weights int8, activations float for the matching linears
        w_only = LayerPrecision(recipe.precision.weight, reason="--float-activations")
        rule = Rules((Rule(a.float_activations, w_only, name="--float-activations"),))
        recipe = recipe.replace(policies=(*recipe.policies, rule))
    act = recipe.precision.activation
    if not a.sink_tokens or name.endswith("llm_int8") or act is None or act.dynamic:
        return recipe
    precision = dataclasses.replace(
        recipe.precision, activation=dataclasses.replace(act, sink_tokens=a.sink_tokens))
    return recipe.replace(precision=precision)


def _base_recipe(name: str, a: argparse.Namespace) -> qpass.Recipe:
    if name.startswith("llm_int8"):
        mode = name.rsplit("_", 1)[1]
        return qpass.resolve_recipe("w8a8_dynamic").replace(
            name=name, policies=(LlmInt8(a.threshold, mode=mode),))
    sensitivity = Sensitivity(float_budget=a.budget, probes=a.probes)
    if name == "w8a8_static_sensitivity":
        return qpass.resolve_recipe("w8a8_static").replace(name=name, policies=(sensitivity,))
    if name == "w8a8_dynamic_smoothquant":
        return qpass.resolve_recipe("w8a8_dynamic").replace(
            name=name, passes=(SmoothQuant(alpha=a.alpha),))
    if name == "w8a8_static_smoothquant":
        return observer_recipe(a.observer).replace(
            name=name, passes=(SmoothQuant(alpha=a.alpha),), policies=(sensitivity,))
    if name in ("w8a8_static_smoothquant_llm_int8", "w8a8_static_llm_int8"):
        static = observer_recipe(a.observer)
        split = LlmInt8(a.threshold, precision=static.precision)
        passes = (SmoothQuant(alpha=a.alpha),) if "smoothquant" in name else ()
        return static.replace(name=name, passes=passes,
                              policies=(split, Sensitivity(float_budget=a.split_budget,
                                                           probes=a.probes)))
    return qpass.resolve_recipe(name)


def _float_weight_fraction(q: fx.GraphModule) -> float:
    rows = [r for r in qpass.precision_report(q) if "keep_float" not in r["reason"]]
    total = sum(r["weights"] for r in rows)
    return sum(r["float_weights"] for r in rows) / total


def _row(name: str, a, gm, example, batches, evals) -> tuple[Row, fx.GraphModule]:
    start = time.perf_counter()
    q = qpass.quantize(gm, _recipe(name, a), batches, example)
    row = Row(name, math.nan, time.perf_counter() - start, _float_weight_fraction(q))
    llm_int8 = q.meta["qpass"].reports["policies"].get("llm_int8", {})
    row.float_column_fraction = llm_int8.get("float_column_fraction")
    if a.onnx and name in ONNX_ROWS:
        path = qpass.export_onnx(q, example, a.out / f"{name}.onnx")
        parity = compare(q, path, evals, threads=a.threads, progress=True)
        row.ppl, row.onnx_ppl, row.onnx_rel_diff = (parity.reference_ppl, parity.candidate_ppl,
                                                    parity.ppl_rel_diff)
    else:
        row.ppl = perplexity(q, evals, progress=True)
    log.info("%s: PPL %.4f (%.0f s)", name, row.ppl, time.perf_counter() - start)
    return row, q


class _OneSite(fx.Interpreter):
    """The float graph with one site replaced by what its quantized form computes."""

    def __init__(self, gm, site, prec) -> None:
        super().__init__(gm)
        self.site, self.prec = site, prec

    def run_node(self, n):
        out = super().run_node(n)
        if n is not self.site.node:
            return out
        args, _ = self.fetch_args_kwargs_from_env(n)
        x, w = args[self.site.op.activation_arg], args[self.site.op.weight_arg]
        w = canonical_weight(w, self.site.op)
        return out + (simulated_matmul(x, w, self.prec) - x.float() @ w.float().T).to(out)


def validate_sensitivity(gm, q, batch, n: int) -> dict:
    """The linearized score against quantizing each of ``n`` sites (spread over the ranking)
    alone, on the batch the policy scored: Spearman rank correlation and score ratios."""
    state = q.meta["qpass"]
    ranking = state.reports["policies"]["sensitivity"]["ranking"]
    picks = [ranking[round(i * (len(ranking) - 1) / max(n - 1, 1))] for i in range(n)]
    sites = {s.node.name: s for s in find_sites(gm)}
    rows = []
    with torch.no_grad():
        y = gm(*batch).float()
        for r in picks:
            prec = state.recipe.precision  # ranked sites carry the recipe's precision
            yq = _OneSite(gm, sites[r["node"]], prec).run(*batch).float()
            true = float((yq - y).pow(2).sum() / y.pow(2).sum())
            rows.append({"fqn": r["fqn"], "rank": r["rank"], "proxy": r["score"], "true": true})
            log.info("validate %s: proxy %.3g, one at a time %.3g", r["fqn"], r["score"], true)
    ranks = [torch.tensor(v).argsort().argsort().double()
             for v in ([r["proxy"] for r in rows], [r["true"] for r in rows])]
    rho = float(torch.corrcoef(torch.stack(ranks))[0, 1])
    return {"sites": rows, "spearman": rho}


def print_table(rows: list[Row]) -> None:
    base = rows[0].ppl if rows[0].name == "fp32" else None
    print("\n| row | PPL | Δ% vs FP32 | float weights | float columns | ONNX PPL | ONNX vs "
          "torch | quantize s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        def pct(v, spec=".2f"):
            return "-" if v is None else f"{100 * v:{spec}}%"
        delta = "-" if base is None else f"{100 * (r.ppl / base - 1):+.2f}"
        onnx = "-" if r.onnx_ppl is None else f"{r.onnx_ppl:.3f}"
        print(f"| {r.name} | {r.ppl:.3f} | {delta} | {pct(r.float_weight_fraction)} | "
              f"{pct(r.float_column_fraction, '.3f')} | {onnx} | "
              f"{pct(r.onnx_rel_diff, '.3f')} | {r.quantize_s:.0f} |")


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    b = bench_setup(a, BENCH_MODELS[a.model], "qpass.bench_policies")
    evals, example, gm = b.evals, b.example, b.gm
    batches = b.batches
    rows, extra = [], {}
    for name in a.rows:
        if name == "fp32":
            rows.append(Row("fp32", perplexity(gm, evals, progress=True)))
            log.info("fp32: PPL %.4f", rows[-1].ppl)
            _save(a, rows, extra)
            continue
        row, q = _row(name, a, gm, example, batches, evals)
        rows.append(row)
        if name == "w8a8_static_sensitivity":
            report = q.meta["qpass"].reports["policies"]["sensitivity"]
            extra["sensitivity_ranking"] = report["ranking"]
            if a.validate:
                extra["validation"] = validate_sensitivity(gm, q, batches[0], a.validate)
        if name == "llm_int8_static":
            extra["llm_int8_columns"] = q.meta["qpass"].reports["policies"]["llm_int8"]
        del q
        _save(a, rows, extra)  # after every row: a long run keeps what it measured
    print_table(rows)
    if "validation" in extra:
        print(f"\nsensitivity score vs one-at-a-time: Spearman "
              f"{extra['validation']['spearman']:.3f} over {a.validate} sites")
    _save(a, rows, extra)
    return 0


def _save(a: argparse.Namespace, rows: list[Row], extra: dict) -> None:
    (a.out / "results.json").write_text(json.dumps(
        {"rows": [asdict(r) for r in rows], **extra,
         "args": {k: str(v) for k, v in vars(a).items()}}, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
