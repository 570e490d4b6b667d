"""qpass's quantize / dequantize as torch custom ops (namespace ``qpass``).

They keep explicit Q/DQ nodes in a converted GraphModule, survive ``torch.export``, map one
to one onto ONNX QuantizeLinear / DequantizeLinear at export, and call ``qpass.numerics``
for every number they produce.

Scale layout, shared by all three ops:
- ``scale.dim() == 0``: per tensor;
- ``scale.dim() == 1`` with ``axis``: one scale per index of ``axis`` (per channel);
- ``scale.dim() == x.dim()``: per block (ONNX blocked quantization; per group [K/g, N] for
  a [K, N] weight), or per token ([..., 1], broadcast).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qpass import numerics


def _shape(t: Tensor, x: Tensor, axis: int) -> Tensor:
    if t.dim() == 1 and x.dim() > 1:
        return numerics.broadcast_qparams(t, x.dim(), axis)
    if t.dim() == x.dim() and t.dim() > 0:
        return numerics.expand_blocks(t, x.shape)
    return t


@torch.library.custom_op("qpass::quantize", mutates_args=())
def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, axis: int, format: str) -> Tensor:
    fmt = numerics.get_format(format)
    return numerics.quantize(x, _shape(scale, x, axis), _shape(zero_point, x, axis), fmt)


@quantize.register_fake
def _(x: Tensor, scale: Tensor, zero_point: Tensor, axis: int, format: str) -> Tensor:
    return torch.empty_like(x, dtype=numerics.get_format(format).storage)


@torch.library.custom_op("qpass::dequantize", mutates_args=())
def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor, axis: int, format: str) -> Tensor:
    return numerics.dequantize(q, _shape(scale, q, axis), _shape(zero_point, q, axis))


@dequantize.register_fake
def _(q: Tensor, scale: Tensor, zero_point: Tensor, axis: int, format: str) -> Tensor:
    return torch.empty_like(q, dtype=torch.float32)


@torch.library.custom_op("qpass::choose_qparams_per_token", mutates_args=())
def choose_qparams_per_token(x: Tensor, format: str, symmetric: bool) -> tuple[Tensor, Tensor]:
    fmt = numerics.get_format(format)
    scale, zero_point = numerics.dynamic_qparams_per_token(x.float(), fmt, symmetric)
    return scale, zero_point


@choose_qparams_per_token.register_fake
def _(x: Tensor, format: str, symmetric: bool) -> tuple[Tensor, Tensor]:
    fmt = numerics.get_format(format)
    shape = (*x.shape[:-1], 1)
    zp_dtype = torch.float32 if fmt.is_float else fmt.storage
    return x.new_empty(shape, dtype=torch.float32), x.new_empty(shape, dtype=zp_dtype)


QUANTIZE = torch.ops.qpass.quantize.default
DEQUANTIZE = torch.ops.qpass.dequantize.default
CHOOSE_QPARAMS_PER_TOKEN = torch.ops.qpass.choose_qparams_per_token.default


@torch.library.custom_op("qpass::dynamic_quant_matmul", mutates_args=())
def dynamic_quant_matmul(x: Tensor, w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor,
                         w_axis: int, format: str) -> Tensor:
    """matmul(dq(q(x)), dq(w_q)) with x quantized to int8, symmetric, per token at run time.

    ``x``: [..., K]; ``w_q``: [K, N] in ``format`` (int8, or uint8 with values and zero points
    shifted by 128). The same numbers as the Q/DQ chain it replaces; exporters lower it to
    integer MatMul kernels.
    """
    fmt = numerics.FORMATS["int8"]
    scale, zp = numerics.dynamic_qparams_per_token(x.float(), fmt, symmetric=True)
    xd = numerics.dequantize(numerics.quantize(x, scale, zp, fmt), scale, zp)
    return torch.matmul(xd, dequantize(w_q, w_scale, w_zero_point, w_axis, format))


@dynamic_quant_matmul.register_fake
def _(x: Tensor, w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor, w_axis: int,
      format: str) -> Tensor:
    return x.new_empty((*x.shape[:-1], w_q.shape[1]), dtype=torch.float32)


DYNAMIC_QUANT_MATMUL = torch.ops.qpass.dynamic_quant_matmul.default


@torch.library.custom_op("qpass::block_rotate", mutates_args=())
def block_rotate(x: Tensor, h: Tensor) -> Tensor:
    """x [..., K] times the block-diagonal matrix with blocks ``h`` [b, b] (b divides K): each
    run of b consecutive features is multiplied by h. Its own op, not a matmul with a constant
    weight, so that qpass never takes the rotation for a layer to quantize."""
    b = h.shape[0]
    return (x.reshape(-1, b) @ h.to(x.dtype)).reshape(x.shape)


@block_rotate.register_fake
def _(x: Tensor, h: Tensor) -> Tensor:
    return torch.empty_like(x)


def _block_rotate_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[1])


def _block_rotate_backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
    (h,) = ctx.saved_tensors
    return block_rotate(grad, h.T.contiguous()), None  # d(x H)/dx: the gradient times Hᵀ


block_rotate.register_autograd(_block_rotate_backward, setup_context=_block_rotate_setup)
BLOCK_ROTATE = torch.ops.qpass.block_rotate.default
