"""LLM.int8() outlier split in the converted graph: y = int8_part + float_part.

For a site whose ``LayerPrecision`` has ``outlier_threshold`` (x: [..., K], W: [N, K]):

static (columns fixed at calibration, ``outlier_columns``)::

    x_in  = x * keep                      keep: [K], 0 at the outlier columns, 1 elsewhere
    x_out = index_select(x, -1, cols)     [..., n]
    y     = matmul(QDQ(x_in), DQ(W_q)) + matmul(x_out, W[:, cols].T) (+ b)

  QDQ(x_in) is per token at run time, or static per tensor with the range its observer
  calibrated on x * keep (one x_in and one Q/DQ pair per observer, shared by q/k/v).

  W_q is quantized from W with the outlier columns zeroed, so their (often large) weights do
  not stretch the per-channel scales; the float part keeps the exact float weights. In ONNX
  that is two MatMuls plus an Add.

dynamic (columns found per batch at run time, as bitsandbytes does)::

    mask  = max_tokens |x[..., j]| > threshold                      [K] bool
    x_out = where(mask, x, 0);  x_in = x - x_out
    y     = matmul(QDQ(x_in), DQ(W_q)) + matmul(x_out, DQ(W_q)) (+ b)

  Any column may be an outlier, so the float part reads the dequantized int8 weight, as
  bitsandbytes' ``MatMul8bitLt`` does, instead of keeping a second float copy of W.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.fx as fx

from qpass import ops
from qpass.capture.fqn import describe
from qpass.config import LayerPrecision
from qpass.convert.weights import QuantizedWeight, quantize_weight
from qpass.quantizable import WEIGHTED_OPS, canonical_weight, fetch_attr

if TYPE_CHECKING:
    from qpass.convert.convert import _Builder

aten = torch.ops.aten


def keep_mask(columns: tuple[int, ...], k: int, dtype: torch.dtype) -> torch.Tensor:
    """[k]: 0 at a static split's outlier ``columns``, 1 elsewhere."""
    keep = torch.ones(k, dtype=dtype)
    keep[list(columns)] = 0
    return keep


def outlier_mask(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """[K] bool: the input columns whose |x| exceeds ``threshold`` anywhere in ``x``."""
    return x.reshape(-1, x.shape[-1]).abs().amax(dim=0) > threshold


def _quantize(weight: torch.Tensor, prec: LayerPrecision, node: fx.Node) -> QuantizedWeight:
    assert prec.weight is not None
    try:
        return quantize_weight(weight, prec.weight)
    except ValueError as exc:
        raise ValueError(f"cannot quantize the weight of {describe(node)}: {exc}") from exc


def _int8_part(b: _Builder, x: fx.Node, qw: QuantizedWeight, prec: LayerPrecision,
               name: str, node: fx.Node) -> tuple[fx.Node, fx.Node]:
    """(y_q, DQ(W_q)) for the quantized path of ``x`` (dynamic activations)."""
    if prec.activation is not None:
        x = b.dynamic_activation(x, prec.activation, node)
    return _times_weight(b, x, qw, name, node)


def _times_weight(b: _Builder, x: fx.Node, qw: QuantizedWeight, name: str,
                  node: fx.Node) -> tuple[fx.Node, fx.Node]:
    wq = b.buffer(f"{name}.weight_q", qw.q)
    ws = b.buffer(f"{name}.weight_scale", qw.scale)
    wz = b.buffer(f"{name}.weight_zero_point", qw.zero_point)
    w = b.call(ops.DEQUANTIZE, (wq, ws, wz, qw.axis, qw.format), node)  # [K, N]
    return b.call(aten.matmul.default, (x, w), node), w


def _static_split(b: _Builder, x: fx.Node, weight: torch.Tensor, prec: LayerPrecision,
                  name: str, node: fx.Node) -> fx.Node:
    cols = torch.tensor(prec.outlier_columns, dtype=torch.long)
    k = weight.shape[1]
    if len(cols) and int(cols.max()) >= k:
        raise ValueError(f"outlier_columns up to {int(cols.max())} do not fit the {k} input "
                         f"features of {describe(node)}; recalibrate the llm_int8 policy on "
                         "this graph")
    w_in = weight.clone()
    w_in[:, cols] = 0
    keep = keep_mask(prec.outlier_columns, k, weight.dtype)
    qw = _quantize(w_in, prec, node)
    if prec.activation is not None and not prec.activation.dynamic:  # x: its observer
        x_in = b.static_activation(x, prec.activation, node, keep=keep if len(cols) else None)
        assert isinstance(x_in, fx.Node)  # LayerPrecision forbids sink tokens with a split
        y, _ = _times_weight(b, x_in, qw, name, node)
    else:
        x_in = b.call(aten.mul.Tensor, (x, b.buffer(f"{name}.outlier_keep", keep)), node)
        y, _ = _int8_part(b, x_in, qw, prec, name, node)
    if not len(cols):
        return y
    x_out = b.call(aten.index_select.default,
                   (x, -1, b.buffer(f"{name}.outlier_columns", cols)), node)  # [..., n]
    w_out = b.buffer(f"{name}.outlier_weight", weight[:, cols].T.contiguous())  # [n, N]
    return b.call(aten.add.Tensor, (y, b.call(aten.matmul.default, (x_out, w_out), node)), node)


def _dynamic_split(b: _Builder, x: fx.Node, weight: torch.Tensor, prec: LayerPrecision,
                   name: str, node: fx.Node) -> fx.Node:
    k = weight.shape[1]
    rows = b.call(aten.reshape.default, (x, [-1, k]), node)
    amax = b.call(aten.amax.default, (b.call(aten.abs.default, (rows,), node), [0]), node)
    mask = b.call(aten.gt.Scalar, (amax, float(prec.outlier_threshold)), node)  # [K] bool
    x_out = b.call(aten.where.ScalarOther, (mask, x, 0.0), node)
    x_in = b.call(aten.sub.Tensor, (x, x_out), node)
    y, w = _int8_part(b, x_in, _quantize(weight, prec, node), prec, name, node)
    return b.call(aten.add.Tensor, (y, b.call(aten.matmul.default, (x_out, w), node)), node)


def rewrite_outlier_site(b: _Builder, node: fx.Node, prec: LayerPrecision, fqn: str) -> str:
    """Replace one site by its outlier split; returns the float weight it no longer reads."""
    op = WEIGHTED_OPS[node.target]
    w_node = node.args[op.weight_arg]
    weight = canonical_weight(fetch_attr(b.gm, str(w_node.target)), op).detach().float()
    if prec.outlier_mode == "static" and prec.outlier_columns is None:
        raise ValueError(
            f"{describe(node)} has a static outlier split (threshold "
            f"{prec.outlier_threshold}) but no outlier_columns; add the llm_int8 policy to the "
            "recipe and pass calib_data to qpass.prepare so it can find them, or use "
            "outlier_mode='dynamic'")
    split = _static_split if prec.outlier_mode == "static" else _dynamic_split
    name = fqn or node.name
    with b.gm.graph.inserting_before(node):
        x = node.args[op.activation_arg]
        y = split(b, x, weight, prec, name, node)
        if op.bias_arg is not None and len(node.args) > op.bias_arg \
                and node.args[op.bias_arg] is not None:
            y = b.call(aten.add.Tensor, (y, node.args[op.bias_arg]), node)
    y.meta.update({k: v for k, v in node.meta.items() if k not in y.meta})
    node.replace_all_uses_with(y)
    b.gm.graph.erase_node(node)
    return str(w_node.target)
