"""``llm_int8``: LLM.int8() outlier splitting (Dettmers et al., 2022).

A few input columns (feature dimensions) of a transformer's linears carry activations far
larger than the rest; quantizing them with the others wastes the int8 range. LLM.int8() keeps
the columns whose |x| exceeds a threshold (6.0 in the paper) in float and runs the rest in
int8 with vector-wise scales (per token for x, per output channel for W)::

    y = QDQ(x_in) @ DQ(W_q) + x_out @ W_out           x = x_in + x_out

- ``mode="static"``: the columns are found once, on the calibration batches, and stored in
  each site's ``LayerPrecision.outlier_columns`` (the converted graph and ONNX carry them as
  constants);
- ``mode="dynamic"``: the converted graph finds the columns from each batch at run time, as
  bitsandbytes does (``qpass.convert.outliers`` has the exact graph form).

The policy applies to the sites the assignment so far quantizes (``keep_float`` layers stay
float). Its report gives the columns per layer and the fraction of columns kept in float.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from qpass.config import LayerPrecision, PerChannel, PerToken, QuantSpec
from qpass.policies.activations import column_absmax
from qpass.policy import POLICIES, Policy, PolicyContext
from qpass.quantizable import Site, canonical_weight, fetch_attr

# LLM.int8()'s vector-wise quantization: int8 W per output channel, int8 x per token.
VECTOR_WISE_INT8 = LayerPrecision(
    weight=QuantSpec("int8", symmetric=True, granularity=PerChannel(0)),
    activation=QuantSpec("int8", symmetric=True, granularity=PerToken(), dynamic=True))


def _bad(name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"LlmInt8.{name}={value!r} is not valid; allowed: {allowed}")


@POLICIES.register("llm_int8")
@dataclass(frozen=True)
class LlmInt8(Policy):
    """Split each quantized site into an int8 part and a float part for outlier columns.

    ``precision`` is the quantized part (default: LLM.int8()'s vector-wise int8); its
    activations may be dynamic or float, and in static mode also static per tensor (their
    range is then calibrated with the outlier columns zeroed). ``max_batches`` limits the
    calibration batches read in static mode (default: all of them).
    """

    threshold: float = 6.0
    mode: str = "static"
    precision: LayerPrecision | None = None
    max_batches: int | None = None

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise _bad("threshold", t, "a positive finite number (the paper uses 6.0)")
        if self.mode not in ("static", "dynamic"):
            raise _bad("mode", self.mode, "'static' (columns fixed at calibration) or 'dynamic' "
                       "(columns found per batch at run time)")
        if self.max_batches is not None and self.max_batches < 1:
            raise _bad("max_batches", self.max_batches, "a positive integer, or None for all")
        if self.precision is not None:
            try:
                self._precision(None)
            except ValueError as exc:
                raise _bad("precision", self.precision, f"a quantized precision the split "
                           f"can use ({exc})") from None

    def _precision(self, columns: tuple[int, ...] | None) -> LayerPrecision:
        base = self.precision or VECTOR_WISE_INT8
        return dataclasses.replace(base, outlier_threshold=float(self.threshold),
                                   outlier_mode=self.mode, outlier_columns=columns)

    def assign(self, sites: list[Site], ctx: PolicyContext) -> dict[str, LayerPrecision]:
        targets = [s for s in sites if not ctx.current[s.node.name].is_float]
        report: dict[str, Any] = {"threshold": self.threshold, "mode": self.mode}
        ctx.report["llm_int8"] = report
        if self.mode == "dynamic":
            reason = f"llm_int8 dynamic: columns with |x| > {self.threshold} found at run time"
            return {s.node.name: dataclasses.replace(self._precision(None), reason=reason)
                    for s in targets}
        if not ctx.batches:
            raise ValueError(
                "the llm_int8 policy in static mode finds its outlier columns on calibration "
                "data, and got none: pass calib_data= to qpass.prepare (qpass.quantize passes "
                "its own along), or use LlmInt8(mode='dynamic')")
        amax = column_absmax(ctx.gm, targets, ctx.batches[:self.max_batches],
                             progress=ctx.progress)
        out, columns, weights = {}, {}, [0, 0]
        for s in targets:
            cols = tuple(int(c) for c in (amax[s.node.name] > self.threshold).nonzero().flatten())
            n_out = canonical_weight(fetch_attr(ctx.gm, str(s.weight_node.target)), s.op).shape[0]
            columns[s.fqn or s.node.name] = list(cols)
            weights[0] += len(cols) * n_out
            weights[1] += amax[s.node.name].numel() * n_out
            reason = (f"llm_int8 static: {len(cols)} of {amax[s.node.name].numel()} input "
                      f"columns with |x| > {self.threshold} stay float")
            out[s.node.name] = dataclasses.replace(self._precision(cols), reason=reason)
        total = sum(a.numel() for a in amax.values())
        n_float = sum(len(c) for c in columns.values())
        report.update(columns=columns, float_columns=n_float, total_columns=total,
                      float_column_fraction=n_float / total if total else 0.0,
                      float_weight_fraction=weights[0] / weights[1] if weights[1] else 0.0,
                      max_abs={s.fqn or s.node.name: float(amax[s.node.name].max())
                               for s in targets})
        return out
