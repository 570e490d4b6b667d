import time

import pytest
import torch

from qpass.config import QuantSpec
from qpass.numerics import fake_quantize, qparams_from_range
from qpass.observe.mse import MSEConfig, MSEObserver
from tests.observe.synthetic import DATASETS, batches, make


def mse(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, spec: QuantSpec) -> float:
    return (fake_quantize(x, scale, zp, spec.fmt) - x).square().mean().item()


def brute_force(x: torch.Tensor, spec: QuantSpec, points: int = 300) -> float:
    """The least MSE over [alpha * lo, alpha * hi] for a fine alpha grid, on the raw data."""
    lo, hi = (-x.abs().max(), x.abs().max()) if spec.symmetric else (x.min(), x.max())
    alphas = torch.linspace(1 / points, 1, points)
    return min(mse(x, *qparams_from_range(a * lo, a * hi, spec.fmt, spec.symmetric), spec)
               for a in alphas)


SPECS = [QuantSpec("int8"), QuantSpec("int4"), QuantSpec("int8", symmetric=False),
         QuantSpec("uint4", symmetric=False)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.format}-{s.symmetric}")
@pytest.mark.parametrize("name", list(DATASETS))
def test_within_one_percent_of_brute_force(name, spec):
    x = make(name)[: 2**14]
    obs = MSEObserver(spec)
    for b in batches(x, 4):
        obs.update(b)
    got = mse(x, *obs.qparams(), spec)
    best = brute_force(x, spec)
    assert got <= best * 1.01, (got, best)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8(fmt):
    spec = QuantSpec(fmt)
    x = make("laplace")[: 2**16]
    obs = MSEObserver(spec)
    obs.update(x)
    assert mse(x, *obs.qparams(), spec) <= brute_force(x, spec, 200) * 1.01


def test_fast_on_an_activation():
    obs = MSEObserver(QuantSpec("int8"))
    obs.update(torch.randn(512, 1536, generator=torch.Generator().manual_seed(0)))
    obs.qparams()
    start = time.perf_counter()
    obs.qparams()
    assert time.perf_counter() - start < 1.0


def test_errors_and_degenerate():
    with pytest.raises(ValueError, match=r"grid=2 .*from 4 to 10000"):
        MSEConfig(grid=2)
    with pytest.raises(RuntimeError, match="calibrate first"):
        MSEObserver(QuantSpec("int4")).qparams()
    for value in (0.0, 5.0):
        obs = MSEObserver(QuantSpec("int4", symmetric=False))
        obs.update(torch.full((8,), value))
        scale, _ = obs.qparams()
        assert torch.isfinite(scale) and scale > 0
