import pytest
import torch

from qpass.config import PerChannel, QuantSpec
from qpass.observe.histogram import StreamingHistogram
from qpass.observe.percentile import PercentileConfig, PercentileObserver
from tests.observe.synthetic import batches, make


def _hist_of(x: torch.Tensor, bins: int = 256) -> StreamingHistogram:
    h = StreamingHistogram(bins)
    h.update(x.reshape(1, -1))
    return h


def test_counts_match_direct_binning():
    x = make("laplace")
    h = _hist_of(x)
    assert h.counts.sum().item() == x.numel()
    w = h.width.item()
    k = torch.floor(x.abs().double() / w).long()
    ref = torch.bincount(k, minlength=h.bins).double()
    assert torch.equal(h.abs_counts()[0], ref)
    assert h.lo.item() == x.min().item() and h.hi.item() == x.max().item()


def test_growth_is_exact():
    # small values first, then a batch 1000x wider: growth merges bins, never restarts
    g = torch.Generator().manual_seed(1)
    small, big = torch.randn(5000, generator=g) * 0.01, torch.randn(5000, generator=g) * 10
    h = StreamingHistogram(256)
    h.update(small.reshape(1, -1))
    h.update(big.reshape(1, -1))
    ref = _hist_of(torch.cat([small, big]))
    assert torch.equal(h.exp, ref.exp)
    assert torch.equal(h.counts, ref.counts)


def test_zero_then_data_grows_from_empty_range():
    h = StreamingHistogram(64)
    h.update(torch.zeros(1, 10))
    h.update(torch.tensor([[3.0, -1.0]]))
    assert h.counts.sum().item() == 12
    assert torch.equal(h.counts, _hist_of(torch.cat([torch.zeros(10), torch.tensor(
        [3.0, -1.0])]), 64).counts)


def test_merge_equals_union_exact_counts():
    a_data, b_data = make("gaussian", 1) * 0.5, make("gaussian_outliers", 2)
    spec = QuantSpec("int8")
    a, b, both = (PercentileObserver(spec) for _ in range(3))
    for x in batches(a_data, 4):
        a.update(x)
        both.update(x)
    for x in batches(b_data, 4):
        b.update(x)
        both.update(x)
    a.merge(b)
    for k, t in both.state_tensors().items():
        assert torch.equal(a.state_tensors()[k], t), k
    assert a.count == both.count == 8
    assert torch.equal(a.qparams()[0], both.qparams()[0])


def test_memory_is_constant_in_batches():
    def sizes(n: int) -> dict[str, torch.Size]:
        obs = PercentileObserver(QuantSpec("int8"))
        g = torch.Generator().manual_seed(n)
        for i in range(n):
            obs.update(torch.randn(8, 64, generator=g) * (1 + i))
        return {k: t.shape for k, t in obs.state_tensors().items()}

    assert sizes(200) == sizes(20)
    assert sizes(20)["counts"] == torch.Size([1, 4096])


def test_per_channel_rows_are_independent():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 512, generator=g) * torch.arange(1, 7)[:, None].float() ** 3
    obs = PercentileObserver(QuantSpec("int8", granularity=PerChannel(0)), PercentileConfig(100))
    obs.update(w)
    scale, zp = obs.qparams()
    assert scale.shape == (6,) and zp.shape == (6,)
    torch.testing.assert_close(scale * 127, w.abs().amax(dim=1))
    for c in range(6):
        assert torch.equal(obs.hist.counts[c], _hist_of(w[c], 2048).counts[0])


def test_errors():
    obs = PercentileObserver(QuantSpec("int8"))
    with pytest.raises(RuntimeError, match="calibrate first"):
        obs.qparams()
    with pytest.raises(ValueError, match="NaN/Inf"):
        obs.update(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="Inf"):
        obs.update(torch.tensor([float("inf")]))
    with pytest.raises(ValueError, match=r"bins=1000 .*power of two"):
        PercentileConfig(bins=1000)
    other = PercentileObserver(QuantSpec("int8"), PercentileConfig(bins=1024))
    obs.update(torch.ones(4))
    other.update(torch.ones(4))
    with pytest.raises(ValueError, match="bins"):
        obs.merge(other)


@pytest.mark.parametrize("value", [0.0, 1.0, -2.5])
@pytest.mark.parametrize("fmt,sym", [("int8", True), ("int8", False), ("int4", True),
                                     ("uint8", False), ("fp8_e4m3", True)])
def test_constant_tensor_gives_finite_scale(value, fmt, sym):
    obs = PercentileObserver(QuantSpec(fmt, symmetric=sym))
    obs.update(torch.full((4, 8), value))
    scale, zp = obs.qparams()
    assert torch.isfinite(scale) and scale > 0
