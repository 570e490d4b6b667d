"""Property tests of qpass.numerics: ONNX QuantizeLinear/DequantizeLinear semantics."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qpass import numerics
from qpass.numerics import FORMATS, dequantize, qparams_from_range, quantize

INT_FORMATS = [f for f in FORMATS.values() if not f.is_float]
finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=64), fmt=st.sampled_from(INT_FORMATS),
       symmetric=st.booleans())
def test_error_inside_range_is_at_most_half_a_step(values, fmt, symmetric):
    x = torch.tensor(values, dtype=torch.float32)
    scale, zp = qparams_from_range(x.min(), x.max(), fmt, symmetric)
    q = quantize(x, scale, zp, fmt)
    err = (dequantize(q, scale, zp) - x).abs()
    # symmetric int ranges leave qmin unused on the negative side only when amax is there;
    # every observed value lies inside [dq(qmin), dq(qmax)] by construction
    assert torch.all(err <= scale / 2 * (1 + 1e-5) + 1e-30), (err.max(), scale)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=64), fmt=st.sampled_from(INT_FORMATS))
def test_zero_is_exact_for_asymmetric(values, fmt):
    x = torch.tensor(values + [0.0], dtype=torch.float32)
    scale, zp = qparams_from_range(x.min(), x.max(), fmt, symmetric=False)
    zero = dequantize(quantize(torch.zeros(1), scale, zp, fmt), scale, zp)
    assert zero.item() == 0.0


def test_ties_round_half_to_even():
    fmt = FORMATS["int8"]
    scale, zp = torch.tensor(1.0), torch.tensor(0, dtype=torch.int8)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
    assert quantize(x, scale, zp, fmt).tolist() == [0, 2, 2, 0, -2, -2]
    # and it agrees with numpy's round-half-to-even, the rule ONNX QuantizeLinear uses
    assert quantize(x, scale, zp, fmt).tolist() == np.round(x.numpy()).astype(int).tolist()


@pytest.mark.parametrize("fmt", INT_FORMATS, ids=lambda f: f.name)
def test_values_outside_the_range_saturate(fmt):
    scale = torch.tensor(0.1)
    zp = numerics.zero_point_storage(torch.tensor(0.0 if fmt.signed else fmt.qmax // 2), fmt)
    q = quantize(torch.tensor([-1e6, 1e6]), scale, zp, fmt)
    assert q.tolist() == [fmt.qmin, fmt.qmax]


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_saturates_and_roundtrips_grid_values(name):
    fmt = FORMATS[name]
    scale = torch.tensor(1.0)
    zp = torch.tensor(0.0)
    q = quantize(torch.tensor([-1e9, 1e9, 1.0, fmt.qmax]), scale, zp, fmt)
    assert dequantize(q, scale, zp).tolist() == [fmt.qmin, fmt.qmax, 1.0, fmt.qmax]
    assert not torch.isnan(q.float()).any()


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=lambda f: f.name)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("value", [0.0, 3.0, -7.5, 1e-42])
def test_constant_and_all_zero_tensors_get_a_finite_valid_scale(fmt, symmetric, value):
    if fmt.is_float and not symmetric:
        pytest.skip("float formats are symmetric")
    x = torch.full((16,), value)
    scale, zp = qparams_from_range(x.min(), x.max(), fmt, symmetric)
    assert torch.isfinite(scale) and scale > 0
    dq = dequantize(quantize(x, scale, zp, fmt), scale, zp)
    assert torch.isfinite(dq).all()
    # a constant is reproduced to within half a step (exactly for 0)
    assert (dq - x).abs().max() <= scale / 2 + 1e-30
    if value == 0.0:
        assert dq.abs().max() == 0


def test_non_finite_range_is_a_clear_error():
    with pytest.raises(ValueError, match="NaN or Inf"):
        qparams_from_range(torch.tensor(float("nan")), torch.tensor(1.0), FORMATS["int8"], True)


def test_group_view_rejects_a_group_size_that_does_not_divide():
    with pytest.raises(ValueError, match="does not divide the last axis"):
        numerics.group_view(torch.zeros(4, 100), 128)


def test_expand_blocks_tiles_per_group_scales():
    t = torch.tensor([[1.0, 2.0]])  # one row, two groups
    assert numerics.expand_blocks(t, (1, 4)).tolist() == [[1.0, 1.0, 2.0, 2.0]]
