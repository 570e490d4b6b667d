"""Synthetic calibration data for the observer tests (fixed seeds, no downloads)."""

from __future__ import annotations

import torch

N = 2**18  # elements per data set


def gaussian(g: torch.Generator) -> torch.Tensor:
    return torch.randn(N, generator=g)


def laplace(g: torch.Generator) -> torch.Tensor:
    u = torch.rand(N, generator=g) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs())


def gaussian_outliers(g: torch.Generator) -> torch.Tensor:
    """Gaussian with 0.01% of the values at +-1000 sigma (+-1%)."""
    x = torch.randn(N, generator=g)
    k = max(1, N // 10000)
    idx = torch.randperm(N, generator=g)[:k]
    sign = torch.where(torch.rand(k, generator=g) < 0.5, -1.0, 1.0)
    x[idx] = sign * 1000 * (1 + 0.01 * torch.randn(k, generator=g))
    return x


def uniform(g: torch.Generator) -> torch.Tensor:
    return torch.rand(N, generator=g) * 6 - 3


def relu(g: torch.Generator) -> torch.Tensor:
    return torch.relu(torch.randn(N, generator=g) * 2 + 0.5)


DATASETS = {"gaussian": gaussian, "laplace": laplace, "gaussian_outliers": gaussian_outliers,
            "uniform": uniform, "relu": relu}


def make(name: str, seed: int = 0) -> torch.Tensor:
    """[N] values of the named distribution."""
    return DATASETS[name](torch.Generator().manual_seed(seed))


def batches(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """``x`` cut into ``n`` batches of [rows, 64]."""
    return [c.reshape(-1, 64) for c in x.chunk(n)]
