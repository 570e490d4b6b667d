"""One place that opens ONNX Runtime CPU sessions, so every caller gets the same settings."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)


def ort_session(path: str | Path, threads: int = 2, *,
                nbits_accuracy_level: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for ``path`` using ``threads`` intra-op threads.

    Graph optimizations are all on (``ORT_ENABLE_ALL``), inter-op parallelism is off
    (one thread), so timings taken with it are comparable run to run.

    Weight-only layers (DequantizeLinear on weights -> MatMul) are fused by ONNX Runtime into
    MatMulNBits, whose default accuracy level 4 quantizes the activations to int8 on the fly;
    qpass asks for level 1 (float32 activations), so a W8A16 model computes what its graph says;
    ``nbits_accuracy_level=4`` trades that exactness for ORT's int8 kernels (for measurements).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ONNX model {str(path)!r} does not exist or is not a file; "
            "pass the path of an exported .onnx file"
        )
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    if nbits_accuracy_level not in (0, 1, 2, 3, 4):
        raise ValueError(f"nbits_accuracy_level must be one of 0, 1, 2, 3, 4 (ONNX Runtime's "
                         f"MatMulNBits levels), got {nbits_accuracy_level!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level",
                                     str(nbits_accuracy_level))
    # spinning worker threads cost 1.4-1.8x on a 2-core machine and, when sessions are timed
    # side by side, slow each other down
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    log.debug("opening ONNX Runtime session for %s with %d threads", path, threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
