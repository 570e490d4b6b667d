"""What each quantization format needs from an ONNX file, and the rewrites every profile shares.

Opsets: QuantizeLinear / DequantizeLinear exist since opset 10 (per tensor); a per-axis scale
needs 13; float8 types need 19; int4/uint4 and blocked (``block_size``) scales need 21.
qpass exports opsets 18 to 21: torch.onnx writes nothing older than 18, and qpass writes Q/DQ
at 21 and moves the file to an older opset only when no node needs the newer one.

int4 weights are held by torch in int8 storage; ``pack_int4_weights`` stores them as packed
ONNX INT4/UINT4 initializers (two values a byte), so a W4A16 file is about a quarter of an int8
one's weights.
"""

from __future__ import annotations

import logging

import ml_dtypes
import numpy as np
import onnx
from onnx import numpy_helper

from qpass.config import LayerPrecision, PerChannel, PerGroup, QuantSpec

log = logging.getLogger(__name__)

OPSET_MIN, OPSET_MAX = 18, 21
T = onnx.TensorProto
_PACKED = {T.INT4: ml_dtypes.int4, T.UINT4: ml_dtypes.uint4}
# attributes of Q/DQ (and Cast) that newer opsets added; dropped when writing an older opset
_NEW_ATTRS = {21: (("block_size", 0), ("output_dtype", 0)), 19: (("saturate", 1),)}


def spec_opset(spec: QuantSpec, role: str) -> tuple[int, str]:
    """The lowest opset that can express ``spec``, and why."""
    if spec.format in ("int4", "uint4"):
        return 21, f"{spec.format} {role}s (INT4 types in QuantizeLinear/DequantizeLinear)"
    if isinstance(spec.granularity, PerGroup):
        return 21, f"per-group {role} scales (blocked DequantizeLinear, block_size)"
    if spec.fmt.is_float:
        return 19, f"{spec.format} {role}s (float8 types)"
    if isinstance(spec.granularity, PerChannel) or spec.dynamic:
        return 13, f"per-{'channel' if role == 'weight' else 'token'} {role} scales (axis)"
    return 10, f"per-tensor {spec.format} {role}s"


def precision_opset(prec: LayerPrecision) -> tuple[int, str]:
    needs = [spec_opset(s, role) for role, s in (("weight", prec.weight),
                                                   ("activation", prec.activation)) if s]
    return max(needs, default=(OPSET_MIN, "float"))


def check_opset(opset: int, precisions: dict[str, LayerPrecision], fqns: dict[str, str]) -> None:
    """Raise ValueError when ``opset`` cannot be written or cannot express a quantized layer."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not (
            OPSET_MIN <= opset <= OPSET_MAX):
        raise ValueError(
            f"export opset={opset!r} is not valid; allowed: {OPSET_MIN} to {OPSET_MAX} "
            f"(torch.onnx writes opset {OPSET_MIN} and newer; per-channel scales need 13, "
            "fp8 19, int4 and per-group 21)")
    too_new = [(name, *precision_opset(p)) for name, p in precisions.items() if not p.is_float]
    too_new = [t for t in too_new if t[1] > opset]
    if too_new:
        name, need, why = max(too_new, key=lambda t: t[1])
        raise ValueError(
            f"export opset={opset} cannot express {why}, which need opset {need}: "
            f"{len(too_new)} quantized layer(s), e.g. {fqns.get(name) or name!r}. Export with "
            f"opset={need} or newer, or choose a format opset {opset} has (int8 per channel: "
            "13, fp8_e4m3: 19)")


def pack_int4_weights(model: onnx.ModelProto) -> int:
    """Store the int8-held weights of INT4/UINT4 DequantizeLinear nodes as packed initializers.

    A weight is packed when a DequantizeLinear reads it with an INT4/UINT4 zero point; its
    values are checked to fit. Returns how many initializers were packed.
    """
    inits = {t.name: t for t in model.graph.initializer}
    casts = {n.output[0]: n for n in model.graph.node if n.op_type == "Cast"}
    folded: list[onnx.NodeProto] = []
    packed: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        w, zp = inits.get(node.input[0]), _constant_zero_point(model, node, inits, casts, folded)
        if w is None or zp is None or zp.data_type not in _PACKED or w.data_type == zp.data_type:
            continue
        if w.name in packed:
            continue
        dtype = _PACKED[zp.data_type]
        values = numpy_helper.to_array(w)
        info = ml_dtypes.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise ValueError(
                f"weight {w.name!r} of DequantizeLinear {node.name!r} holds values in "
                f"[{values.min()}, {values.max()}], outside {np.dtype(dtype).name}'s "
                f"[{info.min}, {info.max}]; the converted graph is inconsistent")
        w.CopyFrom(numpy_helper.from_array(values.astype(dtype), w.name))
        packed.add(w.name)
    _fix_value_info(model, {n: inits[n].data_type for n in packed})
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for cast in folded:
        if cast.output[0] not in used:  # every reader now reads the folded initializer
            model.graph.node.remove(cast)
    log.debug("export: %d int4 weights packed", len(packed))
    return len(packed)


def _constant_zero_point(model: onnx.ModelProto, dq: onnx.NodeProto,
                         inits: dict[str, onnx.TensorProto], casts: dict[str, onnx.NodeProto],
                         folded_casts: list[onnx.NodeProto]) -> onnx.TensorProto | None:
    """The zero point of ``dq`` as an initializer, or None if it is not constant.

    torch.onnx folds ``Cast(zero point, INT4)`` only for small tensors; a larger one (a
    per-group zero point of a real LLM layer) stays a Cast of an initializer. It is folded
    here into an INT4/UINT4 initializer that ``dq`` reads instead."""
    name = dq.input[2]
    if name in inits:
        return inits[name]
    if f"{name}_folded" in inits:  # a zero point shared with a DequantizeLinear folded before
        dq.input[2] = f"{name}_folded"
        return inits[dq.input[2]]
    cast = casts.get(name)
    if cast is None or cast.input[0] not in inits:
        return None
    to = next(a.i for a in cast.attribute if a.name == "to")
    if to not in _PACKED:
        return None
    values = numpy_helper.to_array(inits[cast.input[0]])
    folded = numpy_helper.from_array(values.astype(_PACKED[to]), f"{name}_folded")
    model.graph.initializer.append(folded)
    inits[folded.name] = folded
    dq.input[2] = folded.name
    folded_casts.append(cast)
    return folded


def _fix_value_info(model: onnx.ModelProto, types: dict[str, int]) -> None:
    for info in model.graph.value_info:
        if info.name in types:
            info.type.tensor_type.elem_type = types[info.name]


def set_opset(model: onnx.ModelProto, opset: int) -> None:
    """Declare ``opset`` for the default domain, dropping attributes it does not know.

    Only attributes at their default (``block_size=0``, ``output_dtype=0``, ``saturate=1``)
    are dropped; a node that needs one raises. The ONNX checker then confirms that every node
    exists with its types at ``opset``.
    """
    current = next(o for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current.version == opset:
        return
    drop = {name: default for since, names in _NEW_ATTRS.items() if since > opset
            for name, default in names}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Cast"):
            continue
        keep = []
        for a in node.attribute:
            if a.name not in drop:
                keep.append(a)
            elif onnx.helper.get_attribute_value(a) != drop[a.name]:
                raise ValueError(
                    f"node {node.name!r} ({node.op_type}) sets {a.name}="
                    f"{onnx.helper.get_attribute_value(a)}, which opset {opset} does not have; "
                    f"export with opset={OPSET_MAX}")
        del node.attribute[:]
        node.attribute.extend(keep)
    current.version = opset
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ValueError(f"the exported graph cannot be written at opset {opset}: {exc}. "
                         f"Export with opset={OPSET_MAX}") from exc


def fp8_weights_as_cast(model: onnx.ModelProto) -> int:
    """Rewrite ``DequantizeLinear(fp8 weight, scale)`` as ``Cast(weight) * scale``.

    Same arithmetic (a float8 value times a float32 scale, zero point 0). ONNX Runtime CPU has
    no float8 MatMul; with both MatMul inputs coming from float8 DequantizeLinear nodes, its
    optimizer (1.31) fuses them into MatMulIntegerToFloat anyway and the session fails to
    load. As Cast + Mul, the weight is constant-folded to float32 at session creation (no work
    per run) and the file keeps float8 storage. Returns how many nodes were rewritten.
    """
    inits = {t.name: t for t in model.graph.initializer}
    fp8 = (T.FLOAT8E4M3FN, T.FLOAT8E5M2)
    nodes, changed = [], 0
    for node in model.graph.node:
        w = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if w is None or w.data_type not in fp8:
            nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        scale = inits.get(node.input[1])
        if scale is not None and len(scale.dims) == 1 and len(w.dims) == 2 and axis in (0, -2):
            scale.dims[:] = [scale.dims[0], 1]  # per row: broadcast along axis 0
        elif scale is not None and len(scale.dims) > 1:
            nodes.append(node)  # blocked: keep the DequantizeLinear
            continue
        cast_out = f"{node.output[0]}_f32"
        nodes.append(onnx.helper.make_node("Cast", [w.name], [cast_out], to=T.FLOAT,
                                           name=f"{node.name}_cast"))
        nodes.append(onnx.helper.make_node("Mul", [cast_out, node.input[1]], [node.output[0]],
                                           name=f"{node.name}_scale"))
        changed += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused_initializers(model)
    return changed


def fp8_activations_without_zero_point(model: onnx.ModelProto) -> int:
    """Drop the (always zero) float8 zero point of activation Q/DQ pairs; QuantizeLinear
    names its type with ``output_dtype`` instead (opset 21).

    ONNX Runtime 1.31 removes a Relu in front of a QuantizeLinear whose constant zero point is
    neither int8 nor uint8, as if the quantized range started at zero; for float8 it does not,
    and the model then computes something else (measured: max error 0.46 on a toy MLP). Without
    a zero point input that rewrite does not apply. Returns how many Q nodes changed.
    """
    inits = {t.name: t for t in model.graph.initializer}
    fp8 = (T.FLOAT8E4M3FN, T.FLOAT8E5M2)
    changed = 0
    for node in model.graph.node:
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or zp is None:
            continue
        if zp.data_type not in fp8 or node.input[0] in inits:
            continue
        if node.op_type == "QuantizeLinear":
            kept = [a for a in node.attribute if a.name != "output_dtype"]
            del node.attribute[:]
            node.attribute.extend([*kept, onnx.helper.make_attribute("output_dtype",
                                                                     zp.data_type)])
            changed += 1
        del node.input[2]
    _drop_unused_initializers(model)
    return changed


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
