"""Peak throughput of the GPUs qpass benchmarks on, and the roofline time of a GEMM.

Dense (no sparsity) vendor peaks: NVIDIA H100 and H200 datasheets. Tensor-core TFLOP/s by
operand type, memory bandwidth in TB/s. The keys are matched against
``torch.cuda.get_device_name()`` in order, most specific first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peaks:
    name: str
    fp16_tflops: float
    int8_tops: float
    fp8_tflops: float
    hbm_tbps: float

    def compute(self, kind: str) -> float:
        """Peak operations per second for ``kind`` in {"fp16", "int8", "fp8"}."""
        return {"fp16": self.fp16_tflops, "int8": self.int8_tops,
                "fp8": self.fp8_tflops}[kind] * 1e12


PEAKS: dict[str, Peaks] = {
    "H200": Peaks("H200 SXM", 989.4, 1978.9, 1978.9, 4.8),
    "H100 NVL": Peaks("H100 NVL", 835.0, 1670.0, 1670.0, 3.9),
    "H100 PCIe": Peaks("H100 PCIe", 756.0, 1513.0, 1513.0, 2.0),
    "H100": Peaks("H100 SXM", 989.4, 1978.9, 1978.9, 3.35),
}


def peaks_for(device_name: str) -> Peaks | None:
    """The peaks of a device by its CUDA name ("NVIDIA H100 80GB HBM3"), or None if unknown."""
    for key, peaks in PEAKS.items():
        if key in device_name:
            return peaks
    return None


def roofline_seconds(flops: float, nbytes: float, kind: str, peaks: Peaks) -> float:
    """The least time a kernel can take: compute-bound or memory-bound, whichever is slower."""
    return max(flops / peaks.compute(kind), nbytes / (peaks.hbm_tbps * 1e12))
