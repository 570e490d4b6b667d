"""Static activations whose first tokens (the attention sink) get a scale of their own.

A spec with ``sink_tokens = n`` is observed by a ``SinkObserver``: two observers of the
spec's kind, one fed the first ``n`` positions of every sequence (axis -2), one the rest. Its
``qparams`` are two per-tensor pairs stacked as ``[2]`` tensors, ``(sink, rest)``; the
converted graph quantizes the two slices of the activation with one pair each.
"""

from __future__ import annotations

import dataclasses

import torch

from qpass import numerics
from qpass.config import QuantSpec
from qpass.observe.observer import Observer, make_observer


def split_sink(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x[..., :n, :], x[..., n:, :]): the sink positions and the rest of an activation."""
    _check_rows(x, n)
    return x[..., :n, :], x[..., n:, :]


def _check_rows(x: torch.Tensor, n: int) -> None:
    if x.dim() < 2:
        raise ValueError(
            f"sink_tokens={n} needs activations shaped [..., tokens, features]; got shape "
            f"{tuple(x.shape)}. Set sink_tokens=0 for this layer")


class SinkObserver(Observer):
    """One observer for the first ``spec.sink_tokens`` positions, one for the rest."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        inner = dataclasses.replace(spec, sink_tokens=0)
        self.sink, self.rest = make_observer(inner), make_observer(inner)

    def update(self, x: torch.Tensor) -> None:
        head, tail = split_sink(x, self.spec.sink_tokens)
        for obs, part in ((self.sink, head), (self.rest, tail)):
            if part.numel():
                obs.update(part)
        self.count += 1

    def merge(self, other: Observer) -> Observer:
        if not isinstance(other, SinkObserver) or other.spec != self.spec:
            raise ValueError(f"cannot merge {type(other).__name__}({other.spec}) into "
                             f"SinkObserver({self.spec}): merge observers of one spec")
        self.sink.merge(other.sink)
        self.rest.merge(other.rest)
        self.count += other.count
        return self

    def qparams(self, spec: QuantSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale [2], zero_point [2]): the sink positions' pair, then the rest's."""
        inner = dataclasses.replace(spec or self.spec, sink_tokens=0)
        if self.sink.count == 0 or self.rest.count == 0:
            raise RuntimeError(
                f"the sink-token observer saw {self.sink.count} batch(es) reaching the first "
                f"{self.spec.sink_tokens} position(s) and {self.rest.count} reaching the rest: "
                "calibrate on sequences longer than sink_tokens")
        pairs = [obs.qparams(inner) for obs in (self.sink, self.rest)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def state_dict(self) -> dict[str, object]:
        from qpass.observe.distributed import observer_state

        return {"count": self.count,
                **{f"{name}.{k}": v for name in ("sink", "rest")
                   for k, v in observer_state(getattr(self, name)).items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        from qpass.observe.distributed import load_observer_state

        self.count = int(state["count"])  # type: ignore[call-overload]
        for name in ("sink", "rest"):
            load_observer_state(getattr(self, name), {
                k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{name}.")})


def row_qparams(t: torch.Tensor, x: torch.Tensor, n: int) -> torch.Tensor:
    """A ``[2]`` (sink, rest) parameter as one value per row of ``x``: shape [..., T, 1]."""
    _check_rows(x, n)
    rows = torch.arange(x.shape[-2], device=x.device) < n  # [T]
    shape = [1] * (x.dim() - 2) + [x.shape[-2], 1]
    return torch.where(rows, t[0], t[1]).reshape(shape)


def fake_quantize_static(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                         spec: QuantSpec) -> torch.Tensor:
    """dequantize(quantize(x)) with a static activation's calibrated qparams (both pairs for a
    sink-token spec)."""
    if spec.sink_tokens:
        scale, zero_point = (row_qparams(t, x, spec.sink_tokens) for t in (scale, zero_point))
    return numerics.fake_quantize(x, scale, zero_point, spec.fmt)
