"""What one quantized site computes, on tensors: for policies that measure error before convert.

Same arithmetic as the converted graph (``qpass.numerics`` and ``quantize_weight``), applied
to a float input: no graph rewrite needed. Static activation ranges come from an observer of
the site's spec fed with the tensor itself, which is what calibrating on that batch gives.
"""

from __future__ import annotations

import torch

from qpass import numerics
from qpass.config import LayerPrecision, QuantSpec
from qpass.convert.outliers import outlier_mask
from qpass.convert.weights import quantize_weight
from qpass.observe import make_observer
from qpass.observe.sink import fake_quantize_static


def fake_quant_activation(x: torch.Tensor, spec: QuantSpec | None) -> torch.Tensor:
    """``x`` as the quantized model sees it: dequantize(quantize(x))."""
    if spec is None:
        return x
    if spec.dynamic:
        scale, zp = numerics.dynamic_qparams_per_token(x.float(), spec.fmt, spec.symmetric)
    else:
        observer = make_observer(spec)
        observer.update(x)
        return fake_quantize_static(x.float(), *observer.qparams(), spec)
    return numerics.fake_quantize(x.float(), scale, zp, spec.fmt)


def dequantized_weight(w: torch.Tensor, prec: LayerPrecision) -> torch.Tensor:
    """W [N, K] -> the [K, N] matrix the converted graph multiplies by (outlier columns of a
    static split zeroed before quantizing, as convert does)."""
    assert prec.weight is not None
    w = w.detach().float()
    if prec.outlier_threshold is not None and prec.outlier_mode == "static":
        w = w.clone()
        w[:, list(prec.outlier_columns or ())] = 0
    return quantize_weight(w, prec.weight).dequantize()


def simulated_matmul(x: torch.Tensor, w: torch.Tensor, prec: LayerPrecision,
                     w_dq: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] times the site's weight W [N, K] as the converted graph computes it (no bias).
    ``w_dq`` may pass ``dequantized_weight(w, prec)`` in, when it is reused across calls."""
    x = x.float()
    if prec.is_float:
        return x @ w.float().T
    w_dq = dequantized_weight(w, prec) if w_dq is None else w_dq
    if prec.outlier_threshold is None:
        return fake_quant_activation(x, prec.activation) @ w_dq
    if prec.outlier_mode == "static":
        mask = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
        mask[list(prec.outlier_columns or ())] = True
        w_out = w.detach().float().T
    else:
        mask = outlier_mask(x, prec.outlier_threshold)
        w_out = w_dq
    x_out = torch.where(mask, x, 0.0)
    return fake_quant_activation(x - x_out, prec.activation) @ w_dq + x_out @ w_out
