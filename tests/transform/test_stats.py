"""Channel statistics: exact ranges, and a stratified sample that keeps the outlier tokens."""

import torch

from qpass.transform.stats import ChannelStats


def _tokens(n=512, c=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g)
    x[0, 3] = 3000.0  # one massive activation, as on an LLM's first token
    return x


def test_sample_keeps_the_largest_rows_and_its_weights_are_unbiased():
    x = _tokens()
    sums = []
    for seed in range(200):
        st = ChannelStats()
        st.update(x, 64, torch.Generator().manual_seed(seed), "x")
        sample, w = st.sample, st.sample_weights
        assert sample.shape == (64, 16) and w.shape == (64,)
        assert torch.equal(sample[0], x[0])  # the massive token is always in
        assert w[:8].eq(1).all() and torch.allclose(w[8:], torch.full((56,), 504 / 56))
        assert torch.equal(st.hi, x.amax(dim=0)) and torch.equal(st.lo, x.amin(dim=0))
        sums.append((w[:, None] * sample.pow(2)).sum(0))
    est, true = torch.stack(sums).mean(0), x.pow(2).sum(0)
    assert torch.allclose(est, true, rtol=0.05), (est / true)  # mean of 200 estimates


def test_small_batches_are_taken_whole():
    x = _tokens(n=10)
    st = ChannelStats()
    st.update(x, 64, torch.Generator().manual_seed(0), "x")
    assert torch.equal(st.sample, x) and st.sample_weights.eq(1).all()

