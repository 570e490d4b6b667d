"""Weight storage: per-group weights whose group size does not divide the input features."""

import pytest
import torch

from qpass.config import PerGroup, QuantSpec
from qpass.convert.weights import quantize_weight


def _ref_groups(w: torch.Tensor, g: int) -> torch.Tensor:
    """Float64 symmetric int4 fake quantization, group by group (the last one shorter)."""
    out = torch.empty_like(w, dtype=torch.float64)
    for j in range(0, w.shape[1], g):
        part = w[:, j:j + g].double()
        scale = (part.abs().amax(1, keepdim=True) / 7).float().double()
        out[:, j:j + g] = torch.round(part / scale).clamp(-8, 7) * scale
    return out


def test_a_shorter_last_group_is_stored_at_the_gcd_block_size():
    w = torch.randn(12, 576, generator=torch.Generator().manual_seed(0))
    w[:, 520] = 40.0  # an outlier in the last (64-wide) group only
    qw = quantize_weight(w, QuantSpec("int4", granularity=PerGroup(128)))
    assert qw.q.shape == (576, 12) and qw.scale.shape == (9, 12) and qw.axis == 0
    assert torch.equal(qw.scale[0], qw.scale[1]) and not torch.equal(qw.scale[7], qw.scale[8])
    torch.testing.assert_close(qw.dequantize().T.double(), _ref_groups(w, 128), rtol=0,
                               atol=1e-6)


def test_groups_with_a_tiny_common_block_are_refused():
    with pytest.raises(ValueError, match=r"gcd\(200, 64\) = 8.*divides 200"):
        quantize_weight(torch.randn(4, 200), QuantSpec("int4", granularity=PerGroup(64)))
