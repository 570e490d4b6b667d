"""ACIQ: the clip multipliers against the paper's MSE expression, the clip against its closed
form on synthetic data, exact merging, and errors."""

import math

import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import erf

from qpass.config import PerChannel, QuantSpec
from qpass.numerics import qparams_from_range
from qpass.observe.aciq import (
    ALPHA_GAUSSIAN,
    ALPHA_LAPLACE,
    ACIQConfig,
    ACIQObserver,
    aciq_alpha,
)
from qpass.observe.observer import OBSERVERS, make_observer

PAPER_LAPLACE = {2: 2.83, 3: 3.89, 4: 5.03, 5: 6.2, 6: 7.41, 7: 8.64, 8: 9.89}
PAPER_GAUSSIAN = {2: 1.71, 3: 2.15, 4: 2.55, 5: 2.94, 6: 3.29, 7: 3.61, 8: 3.92}


def laplace_mse(a: float, bits: int) -> float:  # b = 1
    return 2.0 * math.exp(-a) + a * a / (3.0 * 4**bits)


def gaussian_mse(a: float, bits: int) -> float:  # sigma = 1
    tail = (a * a + 1.0) * (1.0 - erf(a / math.sqrt(2.0)))
    return tail - math.sqrt(2.0 / math.pi) * a * math.exp(-a * a / 2) + a * a / (3.0 * 4**bits)


@pytest.mark.parametrize("bits", range(2, 9))
def test_multipliers_minimize_the_expected_mse(bits: int) -> None:
    for mse, table, paper in [(laplace_mse, ALPHA_LAPLACE, PAPER_LAPLACE),
                              (gaussian_mse, ALPHA_GAUSSIAN, PAPER_GAUSSIAN)]:
        best = minimize_scalar(lambda a, f=mse: f(a, bits), bounds=(0.1, 20.0),
                               method="bounded", options={"xatol": 1e-8}).x
        assert table[bits] == pytest.approx(best, rel=5e-4)  # ours: the numeric optimum
        assert paper[bits] == pytest.approx(best, rel=4e-3)  # the paper's rounded table


def _sample(dist: str, n: int, mu: float, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dist == "gaussian":
        return mu + scale * torch.randn(n, generator=g)
    u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5  # inverse-CDF Laplace
    return (mu - scale * u.sign() * torch.log1p(-2 * u.abs())).float()


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("dist", ["gaussian", "laplace"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_matches_closed_form(fmt: str, dist: str, symmetric: bool) -> None:
    mu, s = (0.0, 1.5) if symmetric else (0.5, 1.5)  # s: sigma or b
    spec = QuantSpec(fmt, symmetric=symmetric, observer="aciq")
    obs = ACIQObserver(spec, ACIQConfig(dist))
    for i in range(4):
        obs.update(_sample(dist, 100_000, mu, s, seed=i).reshape(100, 1000))
    alpha = aciq_alpha(spec.fmt.bits, dist) * s
    lo, hi = obs.clip_range()
    if symmetric:
        scale, _ = obs.qparams()
        clip = scale.item() * spec.fmt.qmax
        assert clip == pytest.approx(abs(mu) + alpha, rel=0.02)
        assert hi.item() == pytest.approx(abs(mu) + alpha, rel=0.02)
    else:
        assert lo.item() == pytest.approx(mu - alpha, rel=0.02)
        assert hi.item() == pytest.approx(mu + alpha, rel=0.02)
        ref = qparams_from_range(lo, hi, spec.fmt, False)
        assert all(torch.equal(a, b) for a, b in zip(obs.qparams(), ref, strict=True))


def test_auto_picks_by_kurtosis_per_channel() -> None:
    x = torch.stack([_sample("gaussian", 50_000, 0.0, 1.0, 0),
                     _sample("laplace", 50_000, 0.0, 1.0, 1)])  # [2 channels, n]
    obs = ACIQObserver(QuantSpec("int8", granularity=PerChannel(0)), ACIQConfig("auto"))
    obs.update(x)
    assert obs.is_laplace().tolist() == [False, True]
    _, hi = obs.clip_range()
    assert hi.tolist() == pytest.approx([ALPHA_GAUSSIAN[8], ALPHA_LAPLACE[8]], rel=0.02)


def test_clip_is_capped_by_observed_range() -> None:
    obs = ACIQObserver(QuantSpec("int8", symmetric=False), ACIQConfig("laplace"))
    obs.update(torch.tensor([0.0, 1.0] * 50))  # 9.9 b far beyond [0, 1]
    lo, hi = obs.clip_range()
    assert (lo.item(), hi.item()) == (0.0, 1.0)


def test_merge_is_exact() -> None:
    spec = QuantSpec("int4", granularity=PerChannel(1), observer="aciq")
    batches = [torch.randn(64, 3) * (i + 1) + i for i in range(6)]
    whole = ACIQObserver(spec)
    whole.update(torch.cat(batches))
    a, b = ACIQObserver(spec), ACIQObserver(spec)
    for x in batches[:2]:
        a.update(x)
    for x in batches[2:]:
        b.update(x)
    merged = ACIQObserver(spec).merge(a).merge(b).merge(ACIQObserver(spec))
    assert merged.n == whole.n == 384 and merged.count == 6
    for got, want in zip(merged.moments(), whole.moments(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(merged.qparams()[0], whole.qparams()[0], rtol=1e-6, atol=0)


def test_registered() -> None:
    assert OBSERVERS.get("aciq") is ACIQObserver
    assert isinstance(make_observer(QuantSpec("int8", observer="aciq")), ACIQObserver)


def test_unknown_distribution() -> None:
    with pytest.raises(ValueError, match="ACIQConfig.distribution='cauchy'.*gaussian, laplace"):
        ACIQConfig("cauchy")


def test_float_format_refused() -> None:
    with pytest.raises(ValueError, match="uniform integer grid.*fp8_e4m3"):
        ACIQObserver(QuantSpec("fp8_e4m3"))


def test_qparams_before_data() -> None:
    with pytest.raises(RuntimeError, match="ACIQObserver saw no data"):
        ACIQObserver(QuantSpec("int8")).qparams()


def test_nan_in_data() -> None:
    obs = ACIQObserver(QuantSpec("int8"))
    with pytest.raises(ValueError, match=r"NaN/Inf value\(s\)"):
        obs.update(torch.tensor([1.0, float("inf")]))
    assert obs.moments() is None
