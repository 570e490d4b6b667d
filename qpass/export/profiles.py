"""Export profiles: how ``export_onnx`` shapes the QDQ graph for one runtime, and the rules its
validator applies (``qpass.export.validate``).

A profile is a small class registered by name (``@EXPORT_PROFILES.register("ort")``; plugins
through the ``qpass.export_profiles`` entry-point group) with four hooks, all optional:

- ``unsupported(prec)``: why the profile cannot express one layer's precision (or None);
  ``export_onnx`` refuses such layers before exporting, naming them;
- ``lower(gm)``: FX rewrites before ONNX export (on a copy);
- ``finish(model)``: ONNX rewrites after export;
- ``rules``: the names of the validator rules the exported file must pass.

Built-ins: ``plain`` (the graph as converted), ``ort`` (fast and exact on ONNX Runtime CPU)
and ``tensorrt`` (TensorRT's explicit quantization; ``qpass.export.tensorrt_profile``).
"""

from __future__ import annotations

import copy
from typing import ClassVar

import onnx
import torch.fx as fx

from qpass.config import LayerPrecision
from qpass.export.formats import fp8_activations_without_zero_point, fp8_weights_as_cast
from qpass.export.ort_attention import remove_softmax_nan_guards
from qpass.export.ort_lowering import fuse_dynamic_matmuls
from qpass.export.ort_profile import int8_to_uint8
from qpass.registry import Registry

# every profile's validator checks these (``qpass.export.qdq_rules``)
QDQ_RULES = ("qdq.opset", "qdq.zero_point_type", "qdq.scale")


class ExportProfile:
    """Base of every export profile; the defaults export the converted graph unchanged."""

    name: ClassVar[str] = ""
    rules: ClassVar[tuple[str, ...]] = QDQ_RULES

    def unsupported(self, prec: LayerPrecision) -> str | None:
        """Why this profile cannot express ``prec`` and what to use instead; None if it can."""
        return None

    def lower(self, gm: fx.GraphModule) -> fx.GraphModule:
        return gm

    def finish(self, model: onnx.ModelProto) -> None:
        """Rewrite the exported model in place."""


EXPORT_PROFILES: Registry[type[ExportProfile]] = Registry("export profile",
                                                          "qpass.export_profiles")


def get_profile(profile: str | ExportProfile) -> ExportProfile:
    """A profile instance from its registered name (or the instance itself)."""
    if isinstance(profile, ExportProfile):
        return profile
    if not isinstance(profile, str):
        raise TypeError(f"profile must be a registered name ({', '.join(EXPORT_PROFILES)}) or "
                        f"an ExportProfile, not {type(profile).__name__}")
    try:
        cls = EXPORT_PROFILES.get(profile)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    return cls()


@EXPORT_PROFILES.register("plain")
class PlainProfile(ExportProfile):
    """The converted graph as it is: int8 stays int8, every Q/DQ node as convert made it."""

    name = "plain"


@EXPORT_PROFILES.register("ort")
class OrtProfile(ExportProfile):
    """The form ONNX Runtime's CPU kernels run fast and exactly.

    - per-token dynamic int8 MatMuls become ``MatMulIntegerToFloat`` (``ort_lowering``);
    - the softmax NaN guards of exported attention go, bit-exact (``ort_attention``);
    - int8 Q/DQ tensors move to uint8, bit-exact (``ort_profile``), for ORT's exact U8U8
      kernels;
    - float8 weights are dequantized by Cast * scale, constant-folded by ORT at load
      (``formats.fp8_weights_as_cast``), since ORT CPU has no float8 MatMul; float8
      activation Q/DQ carry no zero point (``formats.fp8_activations_without_zero_point``),
      which keeps ORT from dropping a Relu in front of them.
    """

    name = "ort"
    rules = (*QDQ_RULES, "ort.fp8_matmul", "ort.relu_q", "ort.u8s8", "ort.weight_layout",
             "ort.nbits_block")

    def lower(self, gm: fx.GraphModule) -> fx.GraphModule:
        lowered = copy.deepcopy(gm)
        return lowered if fuse_dynamic_matmuls(lowered) else gm

    def finish(self, model: onnx.ModelProto) -> None:
        int8_to_uint8(model)
        fp8_weights_as_cast(model)
        fp8_activations_without_zero_point(model)
        remove_softmax_nan_guards(model)
