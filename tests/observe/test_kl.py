import math
import time

import pytest
import torch

from qpass.config import QuantSpec
from qpass.observe.kl import EPS, KLConfig, KLObserver
from tests.observe.synthetic import DATASETS, batches, make


def reference_threshold_bins(hist: list[float], levels: int, start: int) -> int:
    """TensorRT / MXNet entropy calibration, written as plain loops."""
    n = len(hist)
    best_i, best_kl = None, math.inf
    for i in range(max(start, levels), n + 1):
        p = hist[:i]
        p[i - 1] += sum(hist[i:])
        m = i // levels
        q = [0.0] * i
        for lv in range(levels):
            a, b = lv * m, (i if lv == levels - 1 else (lv + 1) * m)
            mass = sum(hist[a:b])  # the unfolded histogram, as MXNet quantizes
            nnz = sum(1 for j in range(a, b) if p[j] > 0)
            for j in range(a, b):
                q[j] = mass / nnz if p[j] > 0 else 0.0
        ps = [v if v > 0 else EPS for v in p]
        qs = [v if v > 0 else EPS for v in q]
        zp, zq = sum(ps), sum(qs)
        kl = sum((a / zp) * math.log((a / zp) / (b / zq)) for a, b in zip(ps, qs, strict=True))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("name", list(DATASETS))
def test_equals_loop_reference(name, fmt):
    obs = KLObserver(QuantSpec(fmt), KLConfig(bins=256, start_bin=128))
    x = make(name)
    for b in batches(x, 4):
        obs.update(b)
    h = obs.hist
    hist = h.abs_counts()[0].tolist()
    levels = obs.spec.fmt.qmax + 1
    i_ref = reference_threshold_bins(hist, int(levels), 128)
    t_ref = min(i_ref * h.width.item(), x.abs().max().item())
    scale, zp = obs.qparams()
    assert zp.item() == 0
    assert scale.item() * obs.spec.fmt.qmax == pytest.approx(t_ref, rel=1e-6)


def test_full_size_int4_equals_reference_and_is_fast():
    x = make("laplace", 3)
    obs = KLObserver(QuantSpec("int4"))  # 2048 bins
    obs.update(x)
    start = time.perf_counter()
    lo, hi = obs.clip_range()
    assert time.perf_counter() - start < 1.0
    i_ref = reference_threshold_bins(obs.hist.abs_counts()[0].tolist(), 8, 128)
    assert hi.item() == pytest.approx(i_ref * obs.hist.width.item(), rel=1e-6)
    assert 0 < hi.item() < x.abs().max().item()  # int4 clips a Laplace


def test_outliers_clip_and_asymmetric_one_sided():
    obs = KLObserver(QuantSpec("int8"))
    obs.update(make("gaussian_outliers"))
    lo, hi = obs.clip_range()
    assert hi.item() < 1000 and lo.item() == -hi.item()
    relu = KLObserver(QuantSpec("uint8", symmetric=False))
    relu.update(make("relu"))
    lo, hi = relu.clip_range()
    assert lo.item() == 0 and 0 < hi.item() <= make("relu").max().item()
    scale, zp = relu.qparams()
    assert zp.item() == 0 and torch.isfinite(scale)


def test_errors():
    with pytest.raises(ValueError, match="fp8_e4m3.*mse"):
        KLObserver(QuantSpec("fp8_e4m3"))
    with pytest.raises(ValueError, match=r"start_bin=4096 .*from 1 to bins"):
        KLConfig(start_bin=4096)
    with pytest.raises(RuntimeError, match="calibrate first"):
        KLObserver(QuantSpec("int8")).qparams()
    obs = KLObserver(QuantSpec("int8"))
    obs.update(torch.zeros(3, 3))
    scale, _ = obs.qparams()
    assert scale.item() == 1.0
