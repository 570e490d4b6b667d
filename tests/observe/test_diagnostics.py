"""diagnose: known answers for clip rate, level use, SQNR and MSE."""

import math

import pytest
import torch

from qpass.config import PerChannel, PerGroup, QuantSpec
from qpass.numerics import fake_quantize
from qpass.observe.diagnostics import Diagnostics, diagnose, diagnose_observer, format_levels
from qpass.observe.minmax import MinMaxObserver

ZP0 = torch.tensor(0, dtype=torch.int8)


def test_exact_grid_is_lossless_and_uses_every_level() -> None:
    x = torch.arange(-128, 128).float() * 0.1  # every int8 code once, on the grid
    d = diagnose(x, torch.tensor(0.1), ZP0, QuantSpec("int8", symmetric=False))
    assert d == Diagnostics(clip_rate=0.0, level_utilization=1.0, sqnr_db=math.inf, mse=0.0)


def test_data_twice_the_range() -> None:
    x = torch.linspace(-2.0, 2.0, 400_001)  # uniform on [-2, 2]
    d = diagnose(x, torch.tensor(1.0 / 127), ZP0, QuantSpec("int8"))
    # representable: [-128/127, 1]; outside it: (2 - 128/127) / 4 + (2 - 1) / 4
    assert d.clip_rate == pytest.approx((2 - 128 / 127) / 4 + 0.25, abs=1e-5)
    assert d.level_utilization == 1.0
    # clipped tails dominate the noise: mean of (|x| - 1)^2 over |x| > 1, times their share
    assert d.mse == pytest.approx(0.5 * 1 / 3, rel=0.02)


def test_sqnr_and_mse_agree_with_fake_quantize() -> None:
    torch.manual_seed(0)
    x = torch.randn(1000)
    obs = MinMaxObserver(QuantSpec("int8"))
    obs.update(x)
    d = diagnose_observer(x, obs)
    err = x - fake_quantize(x, *obs.qparams(), obs.spec.fmt)
    assert d.mse == pytest.approx(err.double().square().mean().item(), rel=1e-9)
    assert d.sqnr_db == pytest.approx(10 * math.log10(x.square().sum() / err.square().sum()),
                                      rel=1e-5)
    assert d.clip_rate == 0.0 and 35 < d.sqnr_db < 45  # int8 on a Gaussian: about 40 dB


def test_half_used_range() -> None:
    x = torch.arange(0, 128).float()  # codes 0..127 of int8: half the levels
    d = diagnose(x, torch.tensor(1.0), ZP0, QuantSpec("int8"))
    assert d.level_utilization == 0.5 and d.sqnr_db == math.inf


def test_per_channel_and_per_group_blocks() -> None:
    w = torch.stack([torch.arange(-7, 8).float(), torch.zeros(15)])  # [2, 15]
    obs = MinMaxObserver(QuantSpec("int4", granularity=PerChannel(0)))
    obs.update(w)
    d = diagnose_observer(w, obs)  # row 0: 15 of 16 int4 levels; row 1: only 0
    assert d.level_utilization == pytest.approx((15 / 16 + 1 / 16) / 2)
    assert d.sqnr_db == math.inf and d.clip_rate == 0.0
    obs = MinMaxObserver(QuantSpec("int4", granularity=PerGroup(5)))
    obs.update(w)
    d = diagnose_observer(w, obs)
    assert obs.qparams()[0].shape == (2, 3) and d.clip_rate == 0.0


def test_fp8_levels() -> None:
    assert format_levels("fp8_e4m3").numel() == 253  # 256 codes - 2 NaN - one duplicate zero
    assert format_levels("fp8_e5m2").numel() == 247  # 256 - 6 NaN - 2 Inf - one zero
    x = format_levels("fp8_e4m3")
    d = diagnose(x, torch.tensor(1.0), torch.tensor(0.0), QuantSpec("fp8_e4m3"))
    assert d.level_utilization == 1.0 and d.sqnr_db == math.inf


def test_all_zero_tensor_is_exact() -> None:
    d = diagnose(torch.zeros(8), torch.tensor(1.0), ZP0, QuantSpec("int8"))
    assert d.sqnr_db == math.inf and d.mse == 0.0 and d.level_utilization == 1 / 256


def test_empty_tensor() -> None:
    with pytest.raises(ValueError, match="empty tensor"):
        diagnose(torch.zeros(0), torch.tensor(1.0), ZP0, QuantSpec("int8"))
