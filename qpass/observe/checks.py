"""Input and state checks that observers share, so every observer words its errors alike."""

from __future__ import annotations

import torch

from qpass.observe.observer import Observer


def check_finite(observer: Observer, x: torch.Tensor) -> None:
    """Refuse NaN/Inf: a range or a moment computed from them is meaningless."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{type(observer).__name__}.update got {bad} NaN/Inf value(s) of {x.numel()} in a "
            f"tensor of shape {tuple(x.shape)}; observers need finite data: check the "
            "calibration batch and the layers that produced it"
        )


def no_data_error(observer: Observer) -> RuntimeError:
    """The error for qparams asked of an observer that saw nothing."""
    return RuntimeError(
        f"{type(observer).__name__} saw no data: run qpass.calibrate with at least one batch "
        "that reaches this layer before asking for qparams"
    )
