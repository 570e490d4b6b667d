"""ORT's own quantizers as baselines: the files load, hold integer ops, and stay close to FP32.

Error bound: per-tensor 8-bit activations (step = range/255, ~3% of a Gaussian's sigma) and
per-channel int8 weights (7-bit with reduce_range) add ~1-2% relative noise per quantized
tensor; through three Linear layers that is ~3% relative L2 error (measured on AVX2: 1.8-2.6%).
REL_L2 = 0.05 leaves headroom, yet fails a model hit by U8S8 int16 saturation (full-range int8
weights on x86 without VNNI, reduce_range=False: measured 13-17%).
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from qpass.eval.ort import ort_session
from qpass.export import ort_baselines
from qpass.export.ort_baselines import ort_quantize_dynamic, ort_quantize_static
from qpass.export.ort_latency import LatencyStats, measure_latency

REL_L2 = 0.05
SHAPE = (2, 16, 64)  # [batch, tokens, features]: 3-D like an LLM's hidden states


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 128), torch.nn.GELU(),
        torch.nn.Linear(128, 32),
    ).eval()
    path = tmp_path_factory.mktemp("toy") / "fp32.onnx"
    torch.onnx.export(model, (torch.randn(SHAPE),), dynamo=True).save(str(path))
    return path, ort_session(path).get_inputs()[0].name


def batches(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(n)]


def rel_l2(path: Path, fp32_path: Path, name: str) -> float:
    x = {name: batches(1, seed=123)[0]}
    y = ort_session(path).run(None, x)[0]
    ref = ort_session(fp32_path).run(None, x)[0]
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def ops(path: Path) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in onnx.load(path).graph.node)


def optimized_ops(path: Path, tmp_path: Path) -> set[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return set(ops(tmp_path / "optimized.onnx"))


def test_static_is_qdq_fused_and_close(fp32: tuple[Path, str], tmp_path: Path) -> None:
    src, name = fp32
    out = ort_quantize_static(src, tmp_path / "static.onnx", [{name: b} for b in batches(8, 0)])
    model = onnx.load(out)
    inits = {t.name: t for t in model.graph.initializer}
    q_types = {inits[n.input[2]].data_type for n in model.graph.node
               if n.op_type == "QuantizeLinear"}
    weight_types = {inits[n.input[0]].data_type for n in model.graph.node
                    if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    assert q_types == {onnx.TensorProto.UINT8}  # activations: QUInt8
    assert onnx.TensorProto.INT8 in weight_types  # weights: QInt8 (int32: a Gemm's bias)
    assert weight_types <= {onnx.TensorProto.INT8, onnx.TensorProto.INT32}
    assert model.ir_version <= ort_baselines.ort_max_ir_version()
    fused = optimized_ops(out, tmp_path) & {"QGemm", "MatMulIntegerToFloat", "QLinearMatMul"}
    assert fused, "ORT did not fuse the QDQ linears into integer kernels"
    err = rel_l2(out, src, name)
    assert 1e-4 < err < REL_L2


def test_dynamic_is_integer_and_close(fp32: tuple[Path, str], tmp_path: Path) -> None:
    src, name = fp32
    out = ort_quantize_dynamic(src, tmp_path / "dynamic.onnx")
    counts = ops(out)
    assert counts["DynamicQuantizeLinear"] >= 1 and counts["MatMulInteger"] == 3
    assert "DynamicQuantizeMatMul" in optimized_ops(out, tmp_path)
    err = rel_l2(out, src, name)
    assert 1e-4 < err < REL_L2


def test_bare_arrays_and_newer_ir(fp32: tuple[Path, str], tmp_path: Path) -> None:
    """Bare arrays feed the only input; an IR version ORT cannot read is lowered."""
    src, name = fp32
    model = onnx.load(src)
    model.ir_version = ort_baselines.ort_max_ir_version() + 1
    newer = tmp_path / "newer_ir.onnx"
    onnx.save(model, newer)
    out = ort_quantize_static(newer, tmp_path / "static.onnx", batches(4, 1), preprocess=False)
    assert onnx.load(out).ir_version <= ort_baselines.ort_max_ir_version()
    assert rel_l2(out, src, name) < REL_L2


def test_external_data_in_and_out(fp32: tuple[Path, str], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src, name = fp32
    ext = tmp_path / "ext.onnx"
    onnx.save(onnx.load(src), ext, save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    small = ort_quantize_dynamic(ext, tmp_path / "small.onnx")
    assert not (tmp_path / "small.onnx.data").exists()  # small: one file
    monkeypatch.setattr(ort_baselines, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)
    big = ort_quantize_static(ext, tmp_path / "big.onnx", batches(2, 2))
    assert (tmp_path / "big.onnx.data").is_file()  # "large": weights stay external
    for out in (small, big):
        assert rel_l2(out, src, name) < REL_L2


def test_calibration_inputs_are_checked(fp32: tuple[Path, str], tmp_path: Path) -> None:
    src, _ = fp32
    with pytest.raises(ValueError, match="the model needs"):
        ort_quantize_static(src, tmp_path / "q.onnx", [{"wrong": batches(1, 0)[0]}])
    with pytest.raises(ValueError, match="empty"):
        ort_quantize_static(src, tmp_path / "q.onnx", [])
    with pytest.raises(FileNotFoundError, match="export the float model"):
        ort_quantize_dynamic(tmp_path / "missing.onnx", tmp_path / "q.onnx")


def test_measure_latency(fp32: tuple[Path, str], tmp_path: Path) -> None:
    src, name = fp32
    dynamic = ort_quantize_dynamic(src, tmp_path / "dynamic.onnx")
    sessions = {"fp32": src, "dynamic": ort_session(dynamic)}
    stats = measure_latency(sessions, {name: batches(1, 0)[0]}, warmup=1, repeats=5)
    assert set(stats) == {"fp32", "dynamic"}
    for s in stats.values():
        assert isinstance(s, LatencyStats) and s.repeats == 5
        assert 0 < s.p10_s <= s.median_s <= s.p90_s
        assert s.cpu_median_s > 0
    with pytest.raises(ValueError, match="feeds has no"):
        measure_latency(sessions, {"other": batches(1, 0)[0]})
    with pytest.raises(ValueError, match="repeats must be"):
        measure_latency(sessions, {name: batches(1, 0)[0]}, repeats=0)


def test_measure_latency_warns_about_spinning(fp32: tuple[Path, str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    src, name = fp32
    quiet = ort.SessionOptions()
    quiet.add_session_config_entry("session.intra_op.allow_spinning", "0")
    calm = ort.InferenceSession(str(src), quiet, providers=["CPUExecutionProvider"])
    spinning = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    feeds = {name: batches(1, 0)[0]}
    with caplog.at_level("WARNING", logger="qpass.export.ort_latency"):
        measure_latency({"calm": calm}, feeds, warmup=0, repeats=1)
        assert "allow_spinning" not in caplog.text
        measure_latency({"calm": calm, "spinning": spinning}, feeds, warmup=0, repeats=1)
    assert "['spinning']" in caplog.text
