"""ONNX translations of qpass's custom ops, for ``torch.onnx.export(custom_translation_table=)``.

qpass::quantize / dequantize become QuantizeLinear / DequantizeLinear with the same scale
layout rules as ``qpass.ops``:
- 0-d scale: per tensor;
- 1-D scale with ``axis``: per axis (weights per output channel, [K, N] with axis=1);
- scale of the input's rank, last axis 1 (per token): the input is viewed as [rows, K] and
  quantized per axis 0, which every ONNX runtime supports (opset >= 13);
- scale of the input's rank otherwise: blocked quantization (opset 21 ``block_size``).

qpass::choose_qparams_per_token becomes ReduceMax/ReduceMin arithmetic that mirrors
``qpass.numerics.qparams_from_range`` operation for operation.
"""

from __future__ import annotations

import onnx
from onnxscript import ir
from onnxscript import opset21 as op
from onnxscript.values import Op, Opset

from qpass import numerics, ops


def _matmul_integer_to_float() -> Op:
    """ONNX Runtime's contrib op ``com.microsoft::MatMulIntegerToFloat`` (the ort profile only):
    ``(A - a_zero_point) @ (B - b_zero_point) * a_scale * b_scale``, b_scale per column of B."""
    p = onnx.defs.OpSchema.FormalParameter
    schema = onnx.defs.OpSchema(
        "MatMulIntegerToFloat", "com.microsoft", 1,
        inputs=[p("A", "T1"), p("B", "T2"), p("a_scale", "T3"), p("b_scale", "T3"),
                p("a_zero_point", "T1"), p("b_zero_point", "T2")],
        outputs=[p("Y", "T3")],
        type_constraints=[("T1", ["tensor(uint8)", "tensor(int8)"], ""),
                          ("T2", ["tensor(uint8)", "tensor(int8)"], ""),
                          ("T3", ["tensor(float)"], "")])
    return Op(Opset("com.microsoft", 1), "MatMulIntegerToFloat", schema)


_MATMUL_INTEGER_TO_FLOAT = _matmul_integer_to_float()
ONNX_TYPES = {
    "int8": ir.DataType.INT8, "uint8": ir.DataType.UINT8, "int4": ir.DataType.INT4,
    "uint4": ir.DataType.UINT4, "fp8_e4m3": ir.DataType.FLOAT8E4M3FN,
    "fp8_e5m2": ir.DataType.FLOAT8E5M2,
}


def _rank(v) -> int | None:
    shape = getattr(v, "shape", None)
    return None if shape is None else len(shape)


def _zero_point(zero_point, format: str):
    return op.Cast(zero_point, to=ONNX_TYPES[format])


def _as_rows(x):
    """[..., K] -> [rows, K], and the shape to restore."""
    shape = op.Shape(x)
    k = op.Shape(x, start=-1)
    return op.Reshape(x, op.Concat(op.Constant(value_ints=[-1]), k, axis=0)), shape


def _flat(t):
    return op.Reshape(t, op.Constant(value_ints=[-1]))


def _layout(x, scale, axis: int) -> str:
    rx, rs = _rank(x), _rank(scale)
    if rs is None or rs <= 1:
        return "axis"
    if rs == rx:
        return "rows" if scale.shape[-1] == 1 else "blocked"
    raise ValueError(f"qpass ONNX export: a scale of rank {rs} does not fit an input of rank {rx}")


def _block_size(x, scale) -> tuple[int, int]:
    for d, (n, m) in enumerate(zip(x.shape, scale.shape, strict=True)):
        if m != n and m != 1:
            return d, int(n) // int(m)
    for d, (n, m) in enumerate(zip(x.shape, scale.shape, strict=True)):
        if m == 1 and n != 1:  # one block spans the axis (a group as wide as the layer)
            return d, int(n)
    raise ValueError("qpass ONNX export: blocked qparams without a blocked axis")


def _linear(onnx_op, x, scale, zero_point, axis: int, format: str):
    """QuantizeLinear or DequantizeLinear with qpass's scale layout (see the module doc)."""
    zp = _zero_point(zero_point, format)
    layout = _layout(x, scale, axis)
    if layout == "axis":
        return onnx_op(x, scale, zp, axis=axis)
    if layout == "rows":
        rows, shape = _as_rows(x)
        return op.Reshape(onnx_op(rows, _flat(scale), _flat(zp), axis=0), shape)
    d, block = _block_size(x, scale)
    return onnx_op(x, scale, zp, axis=d, block_size=block)


def quantize(x, scale, zero_point, axis: int, format: str):
    return _linear(op.QuantizeLinear, x, scale, zero_point, axis, format)


def dequantize(q, scale, zero_point, axis: int, format: str):
    return _linear(op.DequantizeLinear, q, scale, zero_point, axis, format)


def choose_qparams_per_token(x, format: str, symmetric: bool):
    fmt = numerics.get_format(format)
    axes = op.Constant(value_ints=[-1])
    zero = op.Constant(value_float=0.0)
    lo = op.Min(op.ReduceMin(x, axes, keepdims=1), zero)
    hi = op.Max(op.ReduceMax(x, axes, keepdims=1), zero)
    if symmetric or fmt.is_float:
        scale = op.Div(op.Max(op.Neg(lo), hi), op.Constant(value_float=float(fmt.qmax)))
    else:
        scale = op.Div(op.Sub(hi, lo), op.Constant(value_float=float(fmt.qmax - fmt.qmin)))
    empty = op.Equal(scale, zero)
    scale = op.Max(scale, op.Constant(value_float=float(numerics.MIN_SCALE)))
    scale = op.Where(empty, op.Constant(value_float=1.0), scale)
    if symmetric or fmt.is_float:
        zp = op.Mul(scale, zero)
    else:
        zp = op.Sub(op.Constant(value_float=float(fmt.qmin)), op.Round(op.Div(lo, scale)))
        zp = op.Clip(zp, op.Constant(value_float=float(fmt.qmin)),
                     op.Constant(value_float=float(fmt.qmax)))
        zp = op.Where(empty, zero, zp)
    zp = zp if fmt.is_float else op.Cast(zp, to=ONNX_TYPES[format])
    return scale, zp


def dynamic_quant_matmul(x, w_q, w_scale, w_zero_point, w_axis: int, format: str):
    """Per-token int8 x (as uint8 + 128) times uint8 weights, exact in int32, scaled after.

    Mirrors ``qpass.ops.dynamic_quant_matmul``: the scale is max|x| / 127 per row. The rows are
    quantized by one per-row QuantizeLinear (zero point 128: bit-exact with round, clip, +128),
    and ONNX Runtime's ``MatMulIntegerToFloat`` runs the exact U8U8 GEMM and applies the weight
    scale per column in the same pass; the per-row scale is one Mul after. ``w_zero_point`` is
    128 everywhere (the ort lowering fuses symmetric weights only), so it is a scalar here.
    """
    if format != "uint8":
        raise ValueError(f"dynamic_quant_matmul exports uint8 weights, got {format!r}")
    int8 = numerics.FORMATS["int8"]
    rows, _ = _as_rows(x)  # [R, K]
    amax = op.ReduceMax(op.Abs(rows), op.Constant(value_ints=[-1]), keepdims=1)  # [R, 1]
    scale = op.Div(amax, op.Constant(value_float=float(int8.qmax)))
    empty = op.Equal(scale, op.Constant(value_float=0.0))
    scale = op.Max(scale, op.Constant(value_float=float(numerics.MIN_SCALE)))
    scale = op.Where(empty, op.Constant(value_float=1.0), scale)
    flat = _flat(scale)  # [R]
    zp = op.Cast(op.Constant(value_int=128), to=ir.DataType.UINT8)
    q = op.QuantizeLinear(rows, flat, op.Expand(zp, op.Shape(flat)), axis=0)  # [R, K] uint8
    one = op.Constant(value_float=1.0)
    acc = _MATMUL_INTEGER_TO_FLOAT(q, w_q, one, w_scale, zp, zp)  # [R, N] = acc * w_scale
    out_shape = op.Concat(op.Shape(x, end=-1), op.Shape(w_q, start=-1), axis=0)
    return op.Reshape(op.Mul(acc, scale), out_shape)


def block_rotate(x, h):
    """[..., K] viewed as [rows, b], times h [b, b], viewed back: one MatMul."""
    blocks = op.Reshape(x, op.Concat(op.Constant(value_ints=[-1]), op.Shape(h, start=-1),
                                     axis=0))
    return op.Reshape(op.MatMul(blocks, h), op.Shape(x))


TRANSLATIONS = {
    ops.BLOCK_ROTATE: block_rotate,
    ops.DYNAMIC_QUANT_MATMUL: dynamic_quant_matmul,
    ops.QUANTIZE: quantize,
    ops.DEQUANTIZE: dequantize,
    ops.CHOOSE_QPARAMS_PER_TOKEN: choose_qparams_per_token,
}
