"""Sink tokens: the first positions of every sequence get a static scale of their own."""

import dataclasses

import pytest
import torch

from qpass import numerics
from qpass.config import LayerPrecision, PerChannel, PerToken, QuantSpec
from qpass.observe import make_observer
from qpass.observe.distributed import load_observer_state, observer_state
from qpass.observe.sink import SinkObserver, fake_quantize_static
from qpass.policies.simulate import fake_quant_activation
from qpass.recipes import INT8_WEIGHT

SINK = QuantSpec("int8", symmetric=True, sink_tokens=1)


def _acts(seed=0, batch=2, tokens=16, c=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, c, generator=g)
    x[:, 0, 3] = 3000.0  # the attention sink's massive activation
    return x


def test_sink_observer_keeps_one_range_for_the_first_tokens_and_one_for_the_rest():
    x = _acts()
    obs = make_observer(SINK)
    assert isinstance(obs, SinkObserver)
    obs.update(x)
    scale, zp = obs.qparams()
    want_sink = numerics.qparams_from_range(x[:, :1].min(), x[:, :1].max(), SINK.fmt, True)
    want_rest = numerics.qparams_from_range(x[:, 1:].min(), x[:, 1:].max(), SINK.fmt, True)
    assert torch.equal(scale, torch.stack([want_sink[0], want_rest[0]]))
    assert torch.equal(zp, torch.stack([want_sink[1], want_rest[1]]))
    assert scale[0] > 100 * scale[1]  # 3000 against the rest's few units


def test_fake_quantize_uses_the_sink_pair_on_the_first_rows_only():
    x = _acts()
    obs = make_observer(SINK)
    obs.update(x)
    scale, zp = obs.qparams()
    got = fake_quantize_static(x, scale, zp, SINK)
    assert torch.equal(got[:, :1], numerics.fake_quantize(x[:, :1], scale[0], zp[0], SINK.fmt))
    assert torch.equal(got[:, 1:], numerics.fake_quantize(x[:, 1:], scale[1], zp[1], SINK.fmt))
    err_rest = (got[:, 1:] - x[:, 1:]).abs().max()
    assert err_rest <= scale[1] / 2 + 1e-6  # the rest keeps its fine resolution
    # the policies' simulation (an observer fed x itself) computes the same numbers
    assert torch.equal(fake_quant_activation(x, SINK), got)


def test_sink_observers_merge_as_one_observer_and_round_trip_their_state():
    a, b = _acts(1), _acts(2)
    one, left, right = (make_observer(SINK) for _ in range(3))
    one.update(a)
    one.update(b)
    left.update(a)
    right.update(b)
    left.merge(right)
    assert all(torch.equal(u, v) for u, v in zip(one.qparams(), left.qparams(), strict=True))
    copy = make_observer(SINK)
    load_observer_state(copy, observer_state(left))
    assert copy.count == 2
    assert all(torch.equal(u, v) for u, v in zip(copy.qparams(), left.qparams(), strict=True))


def test_sink_observer_needs_sequences_longer_than_its_sink():
    obs = make_observer(SINK)
    obs.update(torch.randn(2, 1, 8))
    with pytest.raises(RuntimeError, match="longer than sink_tokens"):
        obs.qparams()
    with pytest.raises(ValueError, match=r"\[\.\.\., tokens, features\]"):
        make_observer(SINK).update(torch.randn(8))


@pytest.mark.parametrize("kwargs, match", [
    ({"sink_tokens": -1}, "non-negative"),
    ({"sink_tokens": True}, "non-negative"),
    ({"sink_tokens": 1, "dynamic": True, "granularity": PerToken()}, "static and PerTensor"),
    ({"sink_tokens": 1, "granularity": PerChannel(0)}, "static and PerTensor"),
])
def test_invalid_sink_specs_say_what_is_allowed(kwargs, match):
    with pytest.raises(ValueError, match=f"sink_tokens.*{match}"):
        QuantSpec("int8", **kwargs)


def test_sink_tokens_belong_to_activations_without_an_outlier_split():
    with pytest.raises(ValueError, match="weight.sink_tokens"):
        LayerPrecision(dataclasses.replace(INT8_WEIGHT, granularity=QuantSpec().granularity,
                                           sink_tokens=1))
    with pytest.raises(ValueError, match="LLM.int8"):
        LayerPrecision(INT8_WEIGHT, SINK, outlier_threshold=6.0)


def test_sink_spec_round_trips_and_old_dicts_still_load():
    assert QuantSpec.from_dict(SINK.to_dict()) == SINK
    assert "sink_tokens" not in QuantSpec().to_dict()
    assert QuantSpec.from_dict({"format": "int8"}).sink_tokens == 0
