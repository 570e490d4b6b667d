import pytest
import torch

from qpass.config import QuantSpec
from qpass.observe.observer import OBSERVERS, make_observer
from qpass.observe.percentile import PercentileConfig, PercentileObserver
from tests.observe.synthetic import DATASETS, batches, make

# percentiles inside the bulk and inside the outlier cluster (the 99.99th of the outlier
# data set sits exactly on the bulk/outlier boundary, where the quantile is ill-defined)
CASES = [(name, p) for name in DATASETS for p in (99.0, 99.9, 99.99)
         if not (name == "gaussian_outliers" and p == 99.99)] + [("gaussian_outliers", 99.999)]


def assert_within_one_bin(est: float, x: torch.Tensor, q: float, bin_w: float) -> None:
    """|est - torch.quantile| <= one bin, or, where the data are sparser than the bins (the
    0.01% tail of a Laplace), est within one bin of the two order statistics that bracket it."""
    ref = torch.quantile(x, q).item()
    if abs(est - ref) <= bin_w * 1.001:
        return
    s = x.sort().values
    r = q * (x.numel() - 1)
    lo, hi = s[int(r)].item(), s[min(int(r) + 1, x.numel() - 1)].item()
    assert lo - bin_w * 1.001 <= est <= hi + bin_w * 1.001, (est, ref, lo, hi, bin_w)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("name,p", CASES)
def test_symmetric_range_within_one_bin(name, p, fmt):
    x = make(name)
    obs = PercentileObserver(QuantSpec(fmt), PercentileConfig(p))
    for b in batches(x, 8):
        obs.update(b)
    ref = torch.quantile(x.abs(), p / 100).item()
    scale, zp = obs.qparams()
    assert zp.item() == 0
    bin_w = obs.hist.width.item()
    assert abs(scale.item() * obs.spec.fmt.qmax - ref) <= bin_w * 1.001


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("name,p", [c for c in CASES if c[0] != "gaussian_outliers"])
def test_asymmetric_range_within_one_bin(name, p, fmt):
    x = make(name)
    obs = PercentileObserver(QuantSpec(fmt, symmetric=False), PercentileConfig(p))
    for b in batches(x, 8):
        obs.update(b)
    lo, hi = obs.clip_range()
    bin_w = obs.hist.width.item()
    assert_within_one_bin(lo.item(), x, 1 - p / 100, bin_w)
    assert_within_one_bin(hi.item(), x, p / 100, bin_w)
    scale, zp = obs.qparams()
    fmt_ = obs.spec.fmt
    assert scale.item() == pytest.approx((max(hi.item(), 0) - min(lo.item(), 0))
                                         / (fmt_.qmax - fmt_.qmin), rel=1e-6)


def test_fp8_scale_maps_clip_to_format_max():
    x = make("laplace")
    obs = PercentileObserver(QuantSpec("fp8_e4m3"), PercentileConfig(99.9))
    obs.update(x)
    scale, _ = obs.qparams()
    assert abs(scale.item() * 448 - torch.quantile(x.abs(), 0.999).item()) <= obs.hist.width.item()


def test_percentile_100_is_minmax():
    x = make("relu")
    obs = PercentileObserver(QuantSpec("uint8", symmetric=False), PercentileConfig(100))
    obs.update(x)
    assert obs.clip_range() == (x.min(), x.max())


def test_presets_registered_and_constructible_by_name():
    for p in ("99", "99.9", "99.99", "99.999"):
        spec = QuantSpec("int8", observer=f"percentile_{p}")
        obs = make_observer(spec)
        assert isinstance(obs, PercentileObserver)
        assert obs.config.percentile == float(p)
    assert OBSERVERS.get("percentile")(QuantSpec("int8")).config.percentile == 99.99


@pytest.mark.parametrize("bad", [0, -1, 100.5, float("nan"), "99"])
def test_bad_percentile(bad):
    with pytest.raises(ValueError, match=r"percentile=.*allowed: a number in \(0, 100\]"):
        PercentileConfig(bad)
