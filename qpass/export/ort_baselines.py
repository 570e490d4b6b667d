"""ONNX Runtime's own quantizer: what a user would do without qpass, for benchmarks to beat.

Both baselines quantize only the linear layers (``MatMul`` / ``Gemm`` with a constant weight),
the same ops qpass quantizes, and follow the CPU guidance in ``quantize_static``'s docstring:

static  ``quantize_static``: QDQ format, MinMax calibration, activations ``QUInt8`` (asymmetric,
        per tensor), weights ``QInt8`` (symmetric, per output channel unless ``per_channel=False``).
        ORT 1.31's function default is ``QInt8`` activations; on x86 the CPU optimizer then
        rewrites int8 Q/DQ pairs to uint8 only where a Q has a single consumer, so inputs shared
        by several projections (q/k/v, gate/up) stay unfused and run as float MatMuls.
dynamic ``quantize_dynamic``: ``DynamicQuantizeLinear`` (uint8, per tensor, per call) and
        ``MatMulInteger`` with ``QInt8`` symmetric weights; ORT fuses it to
        ``DynamicQuantizeMatMul``.

``reduce_range`` (7-bit weights) defaults to what ORT recommends for the CPU at hand: on when
it is x86 without VNNI. There ORT's U8S8 kernels add pairs of u8*s8 products in saturating
int16 (``vpmaddubsw``); with full-range int8 weights that clips and costs ~10-20% max error
on a layer, with 7-bit weights it cannot overflow.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import external_data_helper, helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

log = logging.getLogger(__name__)

EXTERNAL_DATA_THRESHOLD_BYTES = int(1.5 * 2**30)  # protobuf's hard limit is 2 GiB
LINEAR_OP_TYPES = ("MatMul", "Gemm")
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})

CalibBatch = Mapping[str, np.ndarray] | np.ndarray


def ort_quantize_static(
    fp32_onnx_path: str | Path,
    out_path: str | Path,
    calib_batches: Sequence[CalibBatch],
    *,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    preprocess: bool = True,
) -> Path:
    """Quantize the linear layers of ``fp32_onnx_path`` with ORT's static QDQ quantizer.

    ``calib_batches``: dicts ``{input_name: array}``, or arrays for a model with one input.
    ``reduce_range=None`` picks 7-bit weights on x86 CPUs without VNNI (see the module doc).
    """
    reduce_range = x86_without_vnni() if reduce_range is None else reduce_range
    with _quantization_io(fp32_onnx_path, out_path, preprocess) as (model_in, out, external):
        reader = BatchReader(calib_batches, _required_inputs(onnx.load(
            model_in, load_external_data=False)))
        quantize_static(
            str(model_in), str(out), reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(LINEAR_OP_TYPES),
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=external,
            extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True},
        )
    log.info("ORT static QDQ baseline (per_channel=%s, reduce_range=%s) -> %s",
             per_channel, reduce_range, out)
    return out


def ort_quantize_dynamic(
    fp32_onnx_path: str | Path,
    out_path: str | Path,
    *,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    preprocess: bool = True,
) -> Path:
    """Quantize the linear layers of ``fp32_onnx_path`` with ORT's dynamic quantizer."""
    reduce_range = x86_without_vnni() if reduce_range is None else reduce_range
    with _quantization_io(fp32_onnx_path, out_path, preprocess) as (model_in, out, external):
        quantize_dynamic(
            str(model_in), str(out),
            op_types_to_quantize=list(LINEAR_OP_TYPES),
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            use_external_data_format=external,
            extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True},
        )
    log.info("ORT dynamic baseline (per_channel=%s, reduce_range=%s) -> %s",
             per_channel, reduce_range, out)
    return out


@contextlib.contextmanager
def _quantization_io(src: str | Path, out: str | Path,
                     preprocess: bool) -> Iterator[tuple[Path, Path, bool]]:
    """What both baselines do around ORT's quantizer: check the paths, prepare an input ORT
    can read (in a temporary folder beside the output), and fix the output's IR version."""
    src, out = _check_paths(src, out)
    header = onnx.load(src, load_external_data=False)  # graph and small tensors only
    external = _model_bytes(src, header) > EXTERNAL_DATA_THRESHOLD_BYTES
    with tempfile.TemporaryDirectory(prefix="qpass-ortq-", dir=out.parent) as tmp:
        model_in = _prepared(src, header.ir_version, Path(tmp), external, preprocess)
        _remove_stale_data(out)
        yield model_in, out, external
    _fix_ir_version(out)


class BatchReader(CalibrationDataReader):
    """Feeds a list of calibration batches to ``quantize_static`` once, in order."""

    def __init__(self, batches: Sequence[CalibBatch], input_names: Sequence[str]) -> None:
        if len(batches) == 0:
            raise ValueError("calib_batches is empty; pass at least one batch of model inputs")
        self._feeds = [_feed(i, b, input_names) for i, b in enumerate(batches)]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def _feed(i: int, batch: CalibBatch, names: Sequence[str]) -> dict[str, np.ndarray]:
    if not isinstance(batch, Mapping):
        if len(names) != 1:
            raise ValueError(
                f"calib_batches[{i}] is a bare array but the model has {len(names)} inputs "
                f"{list(names)}; pass dicts {{input_name: array}} instead")
        batch = {names[0]: batch}
    missing = [n for n in names if n not in batch]
    unknown = [n for n in batch if n not in names]
    if missing or unknown:
        raise ValueError(
            f"calib_batches[{i}] has inputs {sorted(batch)}; the model needs {list(names)} "
            f"(missing {missing}, unknown {unknown})")
    return {n: np.asarray(v) for n, v in batch.items()}


@functools.cache
def x86_without_vnni() -> bool:
    """True on x86 CPUs whose int8 GEMM can saturate (no VNNI); False elsewhere or unknown."""
    if platform.machine().lower() not in {"x86_64", "amd64", "i386", "i686"}:
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        log.info("cannot read /proc/cpuinfo; assuming a VNNI CPU (reduce_range=False)")
        return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return not (set(line.split(":", 1)[1].split()) & _VNNI_FLAGS)
    return False


@functools.cache
def ort_max_ir_version() -> int:
    """The newest ONNX IR version the installed onnxruntime loads (13 for 1.31)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    for ir in range(onnx.IR_VERSION, 3, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = ir
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - ORT raises a generic Fail for an IR it cannot read
            continue
        return ir
    raise RuntimeError(f"onnxruntime {ort.__version__} loads no IR version <= {onnx.IR_VERSION}")


def _fix_ir_version(path: Path) -> None:
    """Lower the IR version to one ORT reads; external data references stay as they are."""
    model = onnx.load(path, load_external_data=False)
    top = ort_max_ir_version()
    if model.ir_version > top:
        log.info("%s: IR version %d -> %d so onnxruntime %s loads it",
                 path.name, model.ir_version, top, ort.__version__)
        model.ir_version = top
        onnx.save(model, path)


def _prepared(src: Path, ir_version: int, tmp: Path, external: bool, preprocess: bool) -> Path:
    """The input as ORT can read it (IR version), pre-processed if asked; copies go to tmp."""
    model_in = src if ir_version <= ort_max_ir_version() else _ort_readable(src, tmp, external)
    return _preprocessed(model_in, tmp, external) if preprocess else model_in


def _ort_readable(src: Path, tmp: Path, external: bool) -> Path:
    """A copy of ``src`` in ``tmp`` with an IR version ORT loads (calibration runs ORT)."""
    top = ort_max_ir_version()
    model = onnx.load(src)
    log.info("%s: IR version %d is newer than onnxruntime %s reads; quantizing a copy with %d",
             src.name, model.ir_version, ort.__version__, top)
    model.ir_version = top
    dst = tmp / "ir_fixed.onnx"
    onnx.save(model, dst, save_as_external_data=external, all_tensors_to_one_file=True,
              location=dst.name + ".data")
    return dst


def _preprocessed(src: Path, tmp: Path, external: bool) -> Path:
    """ORT's recommended pre-pass: symbolic + ONNX shape inference and ORT's basic graph
    optimizations (constant folding; a 3-D MatMul+Add becomes Reshape/Gemm/Reshape). The
    quantizer needs shapes to choose per-channel axes. Optional: on failure, warn and skip."""
    out = tmp / "preprocessed.onnx"
    try:
        quant_pre_process(
            str(src), str(out), save_as_external_data=external, all_tensors_to_one_file=True,
            external_data_location=out.name + ".data" if external else None)
    except Exception as exc:  # noqa: BLE001 - any failure here just means "quantize as is"
        warnings.warn(
            f"onnxruntime quant_pre_process failed on {src} ({type(exc).__name__}: {exc}); "
            "quantizing the model without it. Pass preprocess=False to skip it quietly.",
            stacklevel=3)
        return src
    return out


def _check_paths(src: str | Path, out: str | Path) -> tuple[Path, Path]:
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise FileNotFoundError(
            f"FP32 ONNX model {str(src)!r} does not exist; export the float model first "
            "(e.g. torch.onnx.export(..., dynamo=True)) and pass its path")
    if src.resolve() == out.resolve():
        raise ValueError(f"out_path {str(out)!r} is the input model; choose another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    return src, out


def _required_inputs(header: onnx.ModelProto) -> list[str]:
    graph = header.graph
    inits = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in inits]


def _model_bytes(path: Path, header: onnx.ModelProto) -> int:
    """Size of the model file plus every external data file it references."""
    files = {
        external_data_helper.ExternalDataInfo(t).location
        for t in header.graph.initializer
        if external_data_helper.uses_external_data(t)
    }
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files)


def _remove_stale_data(out: Path) -> None:
    """onnx appends to an existing external data file; start from an empty one."""
    stale = out.with_name(out.name + ".data")
    if stale.exists():
        log.info("removing stale external data %s", stale)
        stale.unlink()
