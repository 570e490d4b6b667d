"""The ``tensorrt`` export profile: TensorRT's explicit quantization rules.

TensorRT builds an engine from a QDQ ONNX file when the Q/DQ nodes follow its rules:

- symmetric quantization, zero point 0, constant scales (no scales computed at run time, so
  no dynamic per-token activations);
- int8 and fp8 e4m3 for weights and activations, int4 for weights only, with blocked scales;
- activations per tensor; weights per tensor or per output channel (the ``[K, N]`` MatMul
  weight: axis 1), int4 weights per block along K (``block_size``);
- Q/DQ on the inputs of weighted ops (MatMul, Gemm, Conv), not on their outputs;
- opset 13 for per-channel scales, 19 for FP8 (E4M3FN), 21 for blocked INT4.

qpass's converted graph already has this shape for the formats TensorRT has; the profile
refuses the ones it has not, before exporting, and its validator checks the file
(``qpass.export.tensorrt_rules``).
"""

from __future__ import annotations

import torch.fx as fx

from qpass.config import LayerPrecision, PerGroup, QuantSpec
from qpass.export.profiles import EXPORT_PROFILES, QDQ_RULES, ExportProfile
from qpass.state import META_KEY

WEIGHT_FORMATS = ("int8", "fp8_e4m3", "int4")
ACTIVATION_FORMATS = ("int8", "fp8_e4m3")


def _spec_problem(spec: QuantSpec, role: str) -> str | None:
    allowed = WEIGHT_FORMATS if role == "weight" else ACTIVATION_FORMATS
    if spec.format not in allowed:
        return (f"{spec.format} {role}s: TensorRT quantizes {role}s to "
                f"{', '.join(allowed)} only; use one of those formats")
    if not spec.symmetric:
        return (f"asymmetric {role}s: TensorRT needs zero point 0; set symmetric=True in the "
                f"{role} spec")
    if spec.dynamic:
        return (f"dynamic (per-token) {role} quantization: TensorRT needs scales fixed at "
                "export; use a static recipe (w8a8_static, calibrated per tensor) for TensorRT, "
                "or export this recipe with profile='ort'")
    blocked = isinstance(spec.granularity, PerGroup)
    if spec.format == "int4" and not blocked:
        return ("int4 weights without groups: TensorRT runs int4 weights with blocked scales "
                "only; use PerGroup(128)")
    if blocked and spec.format != "int4":
        return (f"per-group {spec.format} {role}s: TensorRT has blocked scales for int4 "
                "weights only; use PerChannel(0) for this format")
    return None


@EXPORT_PROFILES.register("tensorrt")
class TensorRTProfile(ExportProfile):
    """Symmetric int8 / fp8 e4m3 / int4-weight QDQ that TensorRT builds into an engine."""

    name = "tensorrt"
    rules = (*QDQ_RULES, "tensorrt.ops", "tensorrt.types", "tensorrt.symmetric",
             "tensorrt.constant_qparams", "tensorrt.activation_scales", "tensorrt.weight_axis",
             "tensorrt.q_then_dq", "tensorrt.output_qdq")

    def unsupported(self, prec: LayerPrecision) -> str | None:
        if prec.outlier_threshold is not None and prec.outlier_mode == "dynamic":
            return ("the LLM.int8() split with outlier columns found at run time: TensorRT "
                    "needs a static graph; use outlier_mode='static'")
        for role, spec in (("weight", prec.weight), ("activation", prec.activation)):
            problem = spec and _spec_problem(spec, role)
            if problem:
                return problem
        return None

    def lower(self, gm: fx.GraphModule) -> fx.GraphModule:
        state = gm.meta.get(META_KEY)
        report = state.reports.get("passes", {}).get("quantize_embeddings") if state else None
        tables = [e["fqn"] for e in (report or {}).get("embeddings", [])]
        if tables:
            raise ValueError(
                f"export profile 'tensorrt' does not support the int8 embedding tables of the "
                f"quantize_embeddings pass ({', '.join(tables)}): their per-row scales are "
                "looked up at run time, and TensorRT needs constant scales. Drop "
                "QuantizeEmbeddings from the recipe for TensorRT, or export with profile='ort'")
        return gm
