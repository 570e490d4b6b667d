"""Which QLinears each kernel family computes, and the one weight layout it packs them into.

A family's GPU kernels and its CPU reference accept the same sites (their ``why_not`` starts
with the family's) and read the same packed tensors (see ``qpass.lower.packing``).
"""

from __future__ import annotations

import torch

from qpass import numerics
from qpass.lower.packing import group_qparams, pack_int4, per_channel_scale
from qpass.lower.pattern import QLinear


def _per_channel_weight(site: QLinear) -> str | None:
    w = site.weight
    if w.scale.dim() == 2:
        return (f"weight is quantized per group of {site.group_size}; this family needs one "
                "scale per output channel (or per tensor)")
    if w.scale.dim() == 1 and w.axis not in (1, -1):
        return f"weight scales lie along axis {w.axis}; expected the output axis (1 of [K, N])"
    if bool((w.zero_point.float() != 0).any()):
        return "weight is asymmetric (non-zero zero points); this family needs symmetric weights"
    return None


def _activation(site: QLinear, fmt: str) -> str | None:
    a = site.act
    if a is None:
        return "activations stay float (weight-only); this family quantizes activations"
    if a.format != fmt:
        return f"activations are {a.format}; this family needs {fmt}"
    if not a.symmetric or (a.zero_point is not None and bool(a.zero_point != 0)):
        return "activations are asymmetric (zero point != 0); this family needs symmetric ones"
    return None


def why_not_w8a8(site: QLinear, fmt: str) -> str | None:
    """W8A8 in ``fmt`` (int8 or fp8_e4m3): per-token or per-tensor activations, per-channel
    symmetric weights, both in ``fmt``."""
    if site.outliers is not None:
        return "the site splits off LLM.int8() outlier columns (family llm_int8)"
    if site.weight.format != fmt:
        return f"weight format is {site.weight.format}; this family needs {fmt}"
    return _activation(site, fmt) or _per_channel_weight(site)


def pack_w8a8(site: QLinear) -> dict[str, torch.Tensor]:
    w = site.weight
    packed = {"w_q": w.q.T.contiguous(),  # [N, K]
              "w_scale": per_channel_scale(w.scale, site.out_features)}
    if site.act is not None and not site.act.dynamic:
        packed["x_scale"] = site.act.scale.float().reshape(())
    return packed


WEIGHT_ONLY_FORMATS = ("int8", "uint8", "int4", "uint4")


def why_not_weight_only(site: QLinear) -> str | None:
    w = site.weight
    if site.outliers is not None:
        return "the site splits off LLM.int8() outlier columns (family llm_int8)"
    if site.act is not None:
        return "activations are quantized; weight-only kernels read float activations"
    if w.format not in WEIGHT_ONLY_FORMATS:
        return f"weight format is {w.format}; weight-only kernels read {WEIGHT_ONLY_FORMATS}"
    if w.scale.dim() == 1 and w.axis not in (1, -1):
        return f"weight scales lie along axis {w.axis}; expected the output axis (1 of [K, N])"
    if w.scale.dim() == 2 and w.axis != 0:
        return f"group scales are blocked along axis {w.axis}; expected 0 (input features)"
    return None


def pack_weight_only(site: QLinear) -> dict[str, torch.Tensor]:
    w = site.weight
    fmt = numerics.get_format(w.format)
    k, n = site.in_features, site.out_features
    scale, zero = group_qparams(w.scale, w.zero_point, k, n)
    packed: dict[str, torch.Tensor] = {}
    if fmt.bits == 4:
        packed["w_packed"] = pack_int4(w.q.to(torch.int16) - int(fmt.qmin))
        zero = zero - fmt.qmin  # in unsigned code units
        symmetric_zero = -fmt.qmin if fmt.signed else None
    else:
        packed["w_q"] = w.q.contiguous()
        symmetric_zero = 0 if fmt.signed else None
    packed["w_scale"] = scale
    if symmetric_zero is None or bool((zero != symmetric_zero).any()):
        packed["w_zero"] = zero
    return packed


def weight_only_offset(w: dict[str, torch.Tensor]) -> int:
    """The implicit zero point of a packed weight-only layout without ``w_zero``."""
    return 8 if "w_packed" in w else 0
