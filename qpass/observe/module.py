"""The graph node that watches one activation during calibration."""

from __future__ import annotations

import torch

from qpass.observe.observer import Observer


class NonFiniteActivationError(ValueError):
    """A calibration activation held NaN or Inf."""


class ObserverModule(torch.nn.Module):
    """Passes its input through unchanged, feeding it to ``observer`` while ``enabled``.

    ``keep`` ([K], 1 or 0 per input column) observes ``x * keep`` instead: what the int8 part
    of an LLM.int8() static split quantizes, its outlier columns zeroed."""

    def __init__(self, observer: Observer, consumers: tuple[str, ...], source: str,
                 keep: torch.Tensor | None = None) -> None:
        super().__init__()
        self.observer = observer
        self.consumers = consumers  # module FQNs of the ops that read this activation
        self.source = source  # the FX node that produces it
        self.keep = keep
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            if not torch.isfinite(x).all():
                bad = int((~torch.isfinite(x)).sum())
                raise NonFiniteActivationError(
                    f"{bad} NaN/Inf value(s) of {x.numel()} in the input of "
                    f"{', '.join(self.consumers)} (produced by node {self.source!r}). "
                    "Check the calibration batch and the layers before it (overflow in "
                    "float16? uninitialized weights?); qpass cannot choose a range from them"
                )
            self.observer.update(x if self.keep is None else x * self.keep.to(x.dtype))
        return x

    def extra_repr(self) -> str:
        split = "" if self.keep is None else f", {int((self.keep == 0).sum())} columns zeroed"
        return (f"{type(self.observer).__name__}({self.observer.spec.format}) for "
                f"{self.consumers}{split}")
