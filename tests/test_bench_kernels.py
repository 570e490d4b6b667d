"""qpass.bench_kernels without a GPU: a clear message and a non-zero exit; its pure helpers."""

import subprocess
import sys

import pytest
import torch

from qpass.bench_kernels import Row, _row, print_acceptance
from qpass.lower.roofline import PEAKS, peaks_for, roofline_seconds


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_it_says_so_and_exits_non_zero():
    run = subprocess.run([sys.executable, "-m", "qpass.bench_kernels", "--skip-model"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "needs a CUDA GPU" in run.stderr and run.stdout == ""


def test_device_names_find_their_peaks():
    assert peaks_for("NVIDIA H100 80GB HBM3") is PEAKS["H100"]
    assert peaks_for("NVIDIA H100 PCIe") is PEAKS["H100 PCIe"]
    assert peaks_for("NVIDIA H200") is PEAKS["H200"]
    assert peaks_for("NVIDIA A100-SXM4-80GB") is None


def test_roofline_is_the_slower_of_compute_and_memory():
    h100 = PEAKS["H100"]
    # M=1 GEMV, fp16 4096x4096: 32 MiB of weight dominates -> memory bound
    gemv = roofline_seconds(2 * 4096 * 4096, 4096 * 4096 * 2, "fp16", h100)
    assert gemv == pytest.approx(4096 * 4096 * 2 / 3.35e12)
    # M=2048: 68.7 GFLOP at 989.4 TFLOP/s -> compute bound
    big = roofline_seconds(2 * 2048 * 4096 * 4096, 50e6, "fp16", h100)
    assert big == pytest.approx(2 * 2048 * 4096 * 4096 / 989.4e12)
    assert roofline_seconds(1e12, 1, "int8", h100) == pytest.approx(1 / 1978.9)


def test_rows_report_throughput_speedup_and_roofline(capsys):
    r = _row(2048, 4096, 4096, "W8A8 int8 (triton)", 0.1, 10_000_000, 0.2, "int8",
             PEAKS["H100"], roofline_seconds)
    assert r.tflops == pytest.approx(2 * 2048 * 4096 * 4096 / 1e-4 / 1e12)
    assert r.gbps == pytest.approx(100.0) and r.speedup == pytest.approx(2.0)
    assert r.roofline == pytest.approx(2 * 2048 * 4096 * 4096 / 1978.9e12 / 1e-4)
    slow = Row(1, 4096, 4096, "W4A16 g128", 1.0, 0.0, 0.0, 2.0, None)
    print_acceptance([r, slow])
    out = capsys.readouterr().out
    assert "W8A8 int8 (triton) at M=2048: worst 2.00x" in out and "meets the 1.6x" in out
    assert "W4A16 g128 at M=1: worst 2.00x" in out and "MISSES the 2.5x target" in out
