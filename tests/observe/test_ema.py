"""EMA MinMax observer: the moving average, per channel, merge, errors."""

import pytest
import torch

from qpass.config import PerChannel, QuantSpec
from qpass.numerics import qparams_from_range
from qpass.observe.ema import EMAConfig, EMAMinMaxObserver
from qpass.observe.observer import OBSERVERS, make_observer

SPEC = QuantSpec("int8", symmetric=False, observer="ema_minmax")


def test_registered_and_constructible_from_spec() -> None:
    assert OBSERVERS.get("ema_minmax") is EMAMinMaxObserver
    obs = make_observer(SPEC)
    assert isinstance(obs, EMAMinMaxObserver) and obs.config == EMAConfig()


def test_moving_average_of_batch_ranges() -> None:
    obs = EMAMinMaxObserver(SPEC, EMAConfig(momentum=0.5))
    for lo, hi in [(-1.0, 2.0), (-3.0, 4.0), (-5.0, 0.0)]:
        obs.update(torch.tensor([lo, hi, 0.5 * (lo + hi)]))
    # lo: -1 -> -2 -> -3.5; hi: 2 -> 3 -> 1.5
    assert obs.lo.item() == pytest.approx(-3.5) and obs.hi.item() == pytest.approx(1.5)
    scale, zp = obs.qparams()
    ref = qparams_from_range(torch.tensor(-3.5), torch.tensor(1.5), SPEC.fmt, False)
    assert torch.equal(scale, ref[0]) and torch.equal(zp, ref[1])


def test_outlier_batch_moves_range_by_one_minus_momentum() -> None:
    obs = EMAMinMaxObserver(QuantSpec("int8"), EMAConfig(momentum=0.9))
    obs.update(torch.tensor([-1.0, 1.0]))
    obs.update(torch.tensor([-1.0, 101.0]))
    assert obs.hi.item() == pytest.approx(11.0)


def test_momentum_zero_keeps_latest_batch() -> None:
    obs = EMAMinMaxObserver(SPEC, EMAConfig(momentum=0.0))
    obs.update(torch.tensor([-9.0, 9.0]))
    obs.update(torch.tensor([-1.0, 2.0]))
    assert (obs.lo.item(), obs.hi.item()) == (-1.0, 2.0)


def test_per_channel() -> None:
    torch.manual_seed(0)
    spec = QuantSpec("int8", granularity=PerChannel(0), observer="ema_minmax")
    obs = EMAMinMaxObserver(spec, EMAConfig(momentum=0.75))
    a, b = torch.randn(4, 16), torch.randn(4, 16) * 3
    obs.update(a)
    obs.update(b)
    torch.testing.assert_close(obs.hi, 0.75 * a.amax(1) + 0.25 * b.amax(1))
    scale, zp = obs.qparams()
    assert scale.shape == (4,) and zp.shape == (4,)


def test_merge_is_count_weighted_and_order_free() -> None:
    a = EMAMinMaxObserver(SPEC)
    b = EMAMinMaxObserver(SPEC)
    a.update(torch.tensor([-1.0, 1.0]))
    for _ in range(3):
        b.update(torch.tensor([-5.0, 5.0]))
    ab = EMAMinMaxObserver(SPEC).merge(a).merge(b)
    ba = EMAMinMaxObserver(SPEC).merge(b).merge(a)
    assert ab.hi.item() == pytest.approx((1 * 1.0 + 3 * 5.0) / 4)
    assert ab.hi.item() == pytest.approx(ba.hi.item()) and ab.count == 4
    assert EMAMinMaxObserver(SPEC).merge(a).merge(EMAMinMaxObserver(SPEC)).hi.item() == 1.0


@pytest.mark.parametrize("momentum", [1.0, -0.1, 1.5, "0.9", True])
def test_bad_momentum(momentum: object) -> None:
    with pytest.raises(ValueError, match=r"EMAConfig.momentum=.* allowed: a number in \[0, 1\)"):
        EMAConfig(momentum=momentum)  # type: ignore[arg-type]


def test_qparams_before_data() -> None:
    with pytest.raises(RuntimeError, match="EMAMinMaxObserver saw no data"):
        EMAMinMaxObserver(SPEC).qparams()


def test_nan_in_data() -> None:
    obs = EMAMinMaxObserver(SPEC)
    with pytest.raises(ValueError, match=r"1 NaN/Inf value\(s\) of 3"):
        obs.update(torch.tensor([0.0, float("nan"), 1.0]))


def test_shape_change_is_refused() -> None:
    obs = EMAMinMaxObserver(QuantSpec("int8", granularity=PerChannel(0)))
    obs.update(torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"tracks \(4,\) ranges"):
        obs.update(torch.ones(3, 2))
