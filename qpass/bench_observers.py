"""``python -m qpass.bench_observers smollm2``: qpass's activation observers against FP32 and
ONNX Runtime's own calibrators on a real LLM, W8A8 static per-tensor, measured in one run.

qpass rows: the built-in ``w8a8_static`` recipe with only the activation observer replaced.
ORT rows: ``quantize_static`` (the options of ``ort_baselines.ort_quantize_static``) on the
FP32 ONNX export of the same captured model and calibration batches, one per method. Times are
ratios to plain FP32 forwards of the captured model over the calibration batches; memory is
the peak RSS (the kernel's high-water mark, reset at the phase's start) above the RSS then.
A second table checks that histogram observers' memory does not grow with the batch count.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

import qpass
from qpass.config import Recipe
from qpass.eval import load_model, perplexity, wikipedia_token_slices
from qpass.export import ort_baselines as ob
from qpass.observe import OBSERVERS
from qpass.observe.module import ObserverModule
from qpass.recipes import RECIPES

log = logging.getLogger("qpass.bench_observers")
BENCH_MODELS = {"smollm2": "smollm2-135m"}
OBSERVER_NAMES = ("minmax", "ema_minmax", "percentile_99.9", "percentile_99.99",
                  "percentile_99.999", "kl", "mse", "aciq")
ORT_METHODS = ("MinMax", "Percentile", "Entropy")
MEMORY_OBSERVERS = ("percentile", "kl", "mse")


def _rss_bytes() -> int:
    """Resident set size of this process now, from /proc/self/statm (Linux), else psutil."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        import psutil

        return psutil.Process().memory_info().rss


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where it can't."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _high_water_mark() -> int:
    """The peak RSS (VmHWM) since the last reset, in bytes; 0 where /proc has none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class PeakRSS:
    """``with PeakRSS() as m: ...``: the peak RSS inside the block. Exact on Linux (the
    kernel's VmHWM, reset on entry); also sampled every ``interval`` s in a thread, which is
    all there is elsewhere and misses peaks shorter than the interval (an LLM's logits live a
    few ms). Afterwards ``m.start``, ``m.peak`` and ``m.increase`` are in bytes."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> PeakRSS:
        self._exact = _reset_high_water_mark()
        self.start = self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes(), _high_water_mark() if self._exact else 0)

    @property
    def increase(self) -> int:  # bytes
        return self.peak - self.start


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so phases start from a clean RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def observer_recipe(observer: str) -> Recipe:
    """``w8a8_static`` with its activation observer replaced by ``observer``."""
    OBSERVERS.get(observer)  # an unknown name fails here, listing the known ones
    base = RECIPES.get("w8a8_static")
    precision = dataclasses.replace(
        base.precision, activation=dataclasses.replace(base.precision.activation,
                                                       observer=observer),
        reason=f"w8a8_static, activation observer {observer}")
    return dataclasses.replace(base, name=f"w8a8_static_{observer}", precision=precision)


def observer_state_bytes(gm: torch.nn.Module) -> int:
    """Bytes of the tensors every observer of a prepared graph holds (attributes, and what
    an attribute's ``state_tensors()`` lists, e.g. a StreamingHistogram's counts)."""
    values = [v for m in gm.modules() if isinstance(m, ObserverModule)
              for v in vars(m.observer).values()]
    tensors = [t for v in values
               for t in (v.state_tensors().values() if hasattr(v, "state_tensors") else [v])]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


@dataclass
class Row:
    name: str
    ppl: float | None = None
    total_s: float | None = None  # prepare + calibrate + convert (ORT: its quantize_static)
    calib_s: float | None = None  # calibrate alone
    rss_increase: int | None = None  # peak RSS above the start, during calibration
    state_bytes: int | None = None


def markdown_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "-" if v is None else format(v, spec) + suffix


def format_table(rows: list[Row], fp32_fwd_s: float) -> str:
    """rows[0] is FP32: PPL deltas are against it, times are in its forward-pass time."""
    base = rows[0].ppl
    head = ("observer", "PPL", "Δ% vs FP32", "prepare+calibrate+convert (× FP32 fwd)",
            "calibrate (× FP32 fwd)", "peak RSS + during calib (MiB)", "observer state (KiB)")
    cells = []
    for r in rows:
        delta = None if r.ppl is None or base is None else 100 * (r.ppl / base - 1)
        cells.append((r.name, _fmt(r.ppl, ".3f"), _fmt(delta, "+.2f"),
                      _fmt(r.total_s and r.total_s / fp32_fwd_s, ".2f", "×"),
                      _fmt(r.calib_s and r.calib_s / fp32_fwd_s, ".2f", "×"),
                      _fmt(r.rss_increase and r.rss_increase / 2**20, ".0f"),
                      _fmt(r.state_bytes and r.state_bytes / 2**10, ".1f")))
    return markdown_table(head, cells)


def _batches(ids: torch.Tensor) -> list[tuple[torch.Tensor]]:
    return [(ids[i:i + 1],) for i in range(len(ids))]


def fp32_row(gm, batches, evals, threads: int) -> tuple[Row, float]:
    """FP32 perplexity and the time of plain forwards over the calibration batches."""
    with torch.no_grad():
        gm(*batches[0])  # warm-up
        release_memory()
        with PeakRSS() as mem:
            start = time.perf_counter()
            for b in batches:
                gm(*b)
            fwd_s = time.perf_counter() - start
    row = Row("FP32", perplexity(gm, evals, threads=threads), fwd_s, fwd_s, mem.increase)
    return row, fwd_s


def qpass_row(gm, example, observer: str, batches, evals, threads: int) -> Row:
    release_memory()
    start = time.perf_counter()
    prepared = qpass.prepare(gm, observer_recipe(observer), example)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        qpass.calibrate(prepared, batches, progress=False)
        calib_s = time.perf_counter() - t0
    state = observer_state_bytes(prepared)
    q = qpass.convert(prepared)
    total_s = time.perf_counter() - start
    del prepared
    row = Row(f"qpass {observer}", perplexity(q, evals, threads=threads), total_s, calib_s,
              mem.increase, state)
    log.info("%s", row)
    return row


def ort_rows(fp32_onnx: Path, out: Path, calib, evals, methods, threads: int) -> list[Row]:
    """ORT quantize_static with each calibration method, on one pre-processed input."""
    header = onnx.load(fp32_onnx, load_external_data=False)
    external = ob._model_bytes(fp32_onnx, header) > ob.EXTERNAL_DATA_THRESHOLD_BYTES
    rows = []
    with tempfile.TemporaryDirectory(prefix="qpass-ortq-", dir=out) as tmp:
        t0 = time.perf_counter()
        model_in = ob._prepared(fp32_onnx, header.ir_version, Path(tmp), external, True)
        log.info("ORT quant_pre_process: %.1f s (not counted below)", time.perf_counter() - t0)
        names = ob._required_inputs(onnx.load(model_in, load_external_data=False))
        for method in methods:
            dst = out / f"ort_static_{method.lower()}.onnx"
            ob._remove_stale_data(dst)
            reader = ob.BatchReader([b[0].numpy() for b in calib], names)
            release_memory()
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                quantize_static(
                    str(model_in), str(dst), reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(ob.LINEAR_OP_TYPES), per_channel=True,
                    reduce_range=ob.x86_without_vnni(), activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod[method],
                    use_external_data_format=external,
                    extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True})
                total_s = time.perf_counter() - t0
            ob._fix_ir_version(dst)
            row = Row(f"ORT quantize_static ({method})", perplexity(dst, evals, threads=threads),
                      total_s, None, mem.increase)
            log.info("%s", row)
            rows.append(row)
    return rows


def memory_rows(loaded, observers, counts: tuple[int, ...], window: int) -> list[tuple[str, ...]]:
    """Peak RSS increase, observer state and time when calibrating on each count of batches.
    The largest count runs first, so allocator reuse can only favour the smaller counts."""
    ids, _ = wikipedia_token_slices(loaded.tokenizer, calib_windows=max(counts),
                                    eval_windows=0, window=window)
    example = (ids[:1],)
    gm = qpass.capture(loaded.module, example)
    rows = []
    for observer in observers:
        res = {}
        for n in sorted(counts, reverse=True):
            release_memory()
            prepared = qpass.prepare(gm, observer_recipe(observer), example)
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                qpass.calibrate(prepared, _batches(ids[:n]), progress=False)
            res[n] = (mem.increase, observer_state_bytes(prepared), time.perf_counter() - t0)
            del prepared
        log.info("memory %s: %s", observer, res)
        rows.append((observer, *(f"{res[n][0] / 2**20:.0f} | {res[n][1] / 2**10:.0f} | "
                                 f"{res[n][2]:.1f}" for n in counts)))
    return rows


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qpass.bench_observers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=sorted(BENCH_MODELS))
    p.add_argument("--observers", nargs="+", default=list(OBSERVER_NAMES))
    p.add_argument("--ort-methods", nargs="*", default=list(ORT_METHODS),
                   choices=list(ORT_METHODS))
    p.add_argument("--calib-windows", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=12)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory-observers", nargs="*", default=list(MEMORY_OBSERVERS))
    p.add_argument("--memory-batches", nargs=2, type=int, default=[20, 200])
    p.add_argument("--memory-window", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("exports/bench_observers"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("qpass").setLevel(logging.INFO)
    a = _args(argv)
    started = time.perf_counter()
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(BENCH_MODELS[a.model])
    calib, evals = wikipedia_token_slices(loaded.tokenizer, calib_windows=a.calib_windows,
                                          eval_windows=a.eval_windows, window=a.window)
    example, batches = (calib[:1],), _batches(calib)
    gm = qpass.capture(loaded.module, example)
    fp32, fwd_s = fp32_row(gm, batches, evals, a.threads)
    log.info("%s", fp32)
    rows = [fp32] + [qpass_row(gm, example, o, batches, evals, a.threads) for o in a.observers]
    mem = memory_rows(loaded, a.memory_observers, tuple(a.memory_batches), a.memory_window) \
        if a.memory_observers else []
    if a.ort_methods:
        fp32_onnx = Path(qpass.export_onnx(gm, example, a.out / "fp32.onnx"))
        rows += ort_rows(fp32_onnx, a.out, batches, evals, a.ort_methods, a.threads)
    print(f"\nSmolLM2-135M W8A8, static per-tensor activations; calibration {a.calib_windows}"
          f"×{a.window} tokens, evaluation {a.eval_windows}×{a.window}; 1 FP32 fwd = {fwd_s:.2f}"
          " s over all calibration batches; peak RSS from the kernel's high-water mark\n")
    print(format_table(rows, fwd_s))
    if mem:
        head = ("observer", *(f"{k} ({n} batches)" for n in a.memory_batches
                              for k in ("peak RSS + MiB", "state KiB", "calibrate s")))
        print(f"\nMemory vs number of calibration batches ({a.memory_window}-token windows)\n")
        print(markdown_table(head, mem))
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    results = {"rows": [asdict(r) for r in rows], "fp32_fwd_s": fwd_s, "memory": mem,
               "args": {k: str(v) for k, v in vars(a).items()}}
    (a.out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
