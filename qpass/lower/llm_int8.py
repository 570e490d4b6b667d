"""LLM.int8() split (static columns): an int8 GEMM on the normal columns plus a float GEMM
on the outlier columns, added in the int8 GEMM's epilogue.

``qpass.convert`` writes the split as (see ``qpass/convert/outliers.py``)::

    y = matmul(QDQ(x * keep), DQ(W_q)) + matmul(index_select(x, -1, cols), W_out) (+ b)

``match_outlier_split`` extends the QLinear of the int8 part to the whole split. The dynamic
mode (columns found per batch) needs no kernel of its own: its int8 part lowers as W8A8 and
its float part, ``matmul(x_out, DQ(W_q))``, as a weight-only site.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx

from qpass.lower.device import check_device, triton_why_not
from qpass.lower.families import pack_w8a8, why_not_w8a8
from qpass.lower.kernel import KERNELS, Kernel
from qpass.lower.pattern import OutlierSplit, QLinear, bias_add, buffer_value, is_call
from qpass.lower.reference import _Reference, w8a8_reference

aten = torch.ops.aten


def match_outlier_split(gm: fx.GraphModule, site: QLinear) -> QLinear | None:
    """The whole static split around the int8 part ``site``, or None."""
    mul, y = site.x, site.output
    if site.bias is not None or not is_call(mul, aten.mul.Tensor) or len(y.users) != 1:
        return None
    x, keep = mul.args[0], buffer_value(gm, mul.args[1])
    add = next(iter(y.users))
    if keep is None or keep.shape != (site.in_features,) or not is_call(add, aten.add.Tensor) \
            or add.args[0] is not y or not is_call(add.args[1], aten.matmul.default):
        return None
    select, w_out = add.args[1].args
    w_out = buffer_value(gm, w_out)
    if not is_call(select, aten.index_select.default) or select.args[0] is not x \
            or select.args[1] != -1 or w_out is None or w_out.dim() != 2:
        return None
    cols = buffer_value(gm, select.args[2])
    if cols is None or w_out.shape != (cols.numel(), site.out_features):
        return None
    output, bias = add, None
    if (b := bias_add(gm, add, site.out_features)) is not None:
        output, bias = b, b.args[1]
    return dataclasses.replace(site, x=x, bias=bias, output=output,
                               outliers=OutlierSplit(keep, cols, w_out))


def why_not_llm_int8(site: QLinear) -> str | None:
    if site.outliers is None:
        return "the site has no static LLM.int8() outlier split"
    plain = dataclasses.replace(site, outliers=None)
    if (why := why_not_w8a8(plain, "int8")) is not None:
        return f"its int8 part is not W8A8 int8: {why}"
    if site.act is not None and not site.act.dynamic:
        return "its int8 part has static activations; LLM.int8() quantizes them per token"
    return None


def pack_llm_int8(site: QLinear) -> dict[str, torch.Tensor]:
    o = site.outliers
    assert o is not None
    return {**pack_w8a8(dataclasses.replace(site, outliers=None)),
            "keep": o.keep.float().contiguous(), "columns": o.columns.long().contiguous(),
            "w_out": o.weight.float().contiguous()}  # [n, N]


def llm_int8_reference(x: torch.Tensor, w: dict[str, torch.Tensor],
                       bias: torch.Tensor | None) -> torch.Tensor:
    """y [M, N] float64 = W8A8(x * keep) + x[:, columns] @ w_out (+ bias)."""
    y = w8a8_reference(x * w["keep"].to(x.dtype), w, bias, "int8")
    return y + x[:, w["columns"]].double() @ w["w_out"].double()


@KERNELS.register("llm_int8.reference")
class LlmInt8Reference(_Reference):
    family = "llm_int8"

    def why_not(self, site: QLinear) -> str | None:
        return why_not_llm_int8(site)

    def pack(self, site: QLinear) -> dict[str, torch.Tensor]:
        return pack_llm_int8(site)

    def reference(self, x, w, bias):
        return llm_int8_reference(x, w, bias)


@KERNELS.register("llm_int8.triton")
class LlmInt8Triton(Kernel):
    """x * keep quantized per token in one triton kernel; x[:, cols] @ w_out by cuBLAS in x's
    dtype; the int8 GEMM adds it in its epilogue."""

    family = "llm_int8"
    backend = "cuda"
    priority = 20

    def why_not(self, site: QLinear) -> str | None:
        return why_not_llm_int8(site) or triton_why_not()

    def pack(self, site: QLinear) -> dict[str, torch.Tensor]:
        return pack_llm_int8(site)

    def run(self, x, w, bias, out):
        check_device(x, "llm_int8.triton", interpretable=True)
        from qpass.lower import triton_int8

        x = x.contiguous()
        q_x, s_x = triton_int8.quantize_rows(x, "int8", keep=w["keep"])
        residual = torch.mm(x[:, w["columns"]], w["w_out"].to(x.dtype))  # [M, N]
        return triton_int8.int8_gemm(q_x, w["w_q"], s_x, w["w_scale"], bias, out, residual)
