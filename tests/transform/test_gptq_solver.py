"""The GPTQ solver against a plain float64 reference written here without qpass.numerics:
the same integers, except in rows where the reference meets an exact rounding tie."""

from __future__ import annotations

import pytest
import torch

from qpass.config import PerChannel, PerGroup, QuantSpec
from qpass.transform.gptq_solver import gptq_quantize
from qpass.transform.hessian import HessianError

RANGES = {"int4": (-8, 7), "int3": (-4, 3), "int8": (-128, 127), "uint4": (0, 15)}
TIE = 1e-6  # |frac(w / s) - 0.5| below this counts as an exact tie


def _ref_qparams(w: torch.Tensor, fmt: str, symmetric: bool):
    """Per-row float64 minmax parameters, stored as float32 scales like every qpass scale."""
    qmin, qmax = RANGES[fmt]
    lo = w.amin(1).clamp(max=0)
    hi = w.amax(1).clamp(min=0)
    if symmetric:
        mid = 0 if qmin < 0 else (qmax + 1) // 2
        scale = torch.maximum(-lo, hi) / (qmax - mid)
        zp = torch.full_like(scale, float(mid))
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = None
    scale = torch.where(scale == 0, 1.0, scale).float().double()
    if zp is None:
        zp = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale, zp


def reference_gptq(w, h, fmt, symmetric, group, percdamp=0.01, act_order=False, shrinkage=0.0):
    """Textbook GPTQ: no blocks, every later column updated right after each column; the
    Hessian shrunk toward its diagonal first."""
    n, k = w.shape
    qmin, qmax = RANGES[fmt]
    w, h = w.double().clone(), h.double().clone()
    h = (1 - shrinkage) * h + shrinkage * torch.diag(torch.diagonal(h))
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    h += percdamp * torch.diagonal(h).mean() * torch.eye(k, dtype=torch.float64)
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order \
        else torch.arange(k)
    hp = h[perm][:, perm]
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hp)), upper=True)
    static = {j // group: _ref_qparams(w[:, j:j + group], fmt, symmetric)
              for j in range(0, k, group)}
    wp = w[:, perm].clone()
    q = torch.zeros(n, k, dtype=torch.long)
    ties = torch.zeros(n, dtype=torch.bool)
    params = {}
    for i in range(k):
        col = int(perm[i])
        if act_order or group == k:
            params[col // group] = static[col // group]
        elif col % group == 0:
            params[col // group] = _ref_qparams(wp[:, i:i + group], fmt, symmetric)
        s, z = params[col // group]
        y = wp[:, i] / s
        ties |= ((y - y.floor()) - 0.5).abs() < TIE
        qi = (torch.round(y) + z).clamp(qmin, qmax)
        q[:, col] = qi.long()
        err = (wp[:, i] - (qi - z) * s) / u[i, i]
        wp[:, i:] -= err[:, None] * u[i, i:][None, :]
    return q, ties


def _layer(n=48, k=256, tokens=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    # correlated inputs with a few strong channels, as in real LLM activations
    x = torch.randn(tokens, k, generator=g) @ (torch.eye(k) + 0.3 * torch.randn(k, k,
                                                                                 generator=g))
    x[:, :4] *= 20
    return w, 2 * x.double().T @ x.double() / tokens


CASES = [("int4", True, 64, False, 0.0), ("int4", False, 64, False, 0.0),
         ("int3", False, 128, False, 0.0), ("int8", True, 256, False, 0.0),
         ("uint4", False, 32, False, 0.0), ("int4", True, 64, True, 0.0),
         ("int3", False, 256, True, 0.0), ("int4", False, 128, False, 0.5),
         ("int3", False, 64, True, 0.3)]


@pytest.mark.parametrize("fmt,symmetric,group,act_order,shrinkage", CASES)
def test_solver_matches_the_float64_reference(fmt, symmetric, group, act_order, shrinkage):
    w, h = _layer()
    k = w.shape[1]
    gran = PerChannel(0) if group == k else PerGroup(group)
    spec = QuantSpec(fmt, symmetric=symmetric, granularity=gran)
    res = gptq_quantize(w, h, spec, blocksize=128, act_order=act_order, shrinkage=shrinkage)
    got = res.weight.q.T.long()  # [N, K] codes, zero point included as in the reference
    want, ties = reference_gptq(w, h, fmt, symmetric, group, act_order=act_order,
                                shrinkage=shrinkage)
    same = (got == want).all(1)
    assert bool(same[~ties].all()), f"rows {torch.nonzero(~same & ~ties).flatten().tolist()}"
    assert int(ties.sum()) <= w.shape[0] // 10


def test_error_feedback_beats_round_to_nearest_on_the_layer_loss():
    w, h = _layer(seed=3)
    spec = QuantSpec("int4", symmetric=False, granularity=PerGroup(64))
    gptq = gptq_quantize(w, h, spec).weight.dequantize().T.double()
    from qpass.convert.weights import quantize_weight

    rtn = quantize_weight(w, spec).dequantize().T.double()

    def loss(wq):
        d = wq - w.double()
        return float(((d @ h) * d).sum())

    assert loss(gptq) < 0.7 * loss(rtn)


@pytest.mark.parametrize("group", [64, 256])
def test_full_shrinkage_is_round_to_nearest(group):
    from qpass.convert.weights import quantize_weight

    w, h = _layer(seed=5)
    gran = PerChannel(0) if group == w.shape[1] else PerGroup(group)
    spec = QuantSpec("int4", symmetric=False, granularity=gran)
    got = gptq_quantize(w, h, spec, shrinkage=1.0).weight
    want = quantize_weight(w, spec)
    assert torch.equal(got.q, want.q)
    torch.testing.assert_close(got.scale, want.scale, rtol=0, atol=0)


def test_singular_hessian_without_damping_names_the_layer_and_the_fix():
    w, _ = _layer()
    x = torch.randn(10, w.shape[1], dtype=torch.float64)  # 10 tokens, 256 features: rank 10
    h = 2 * x.T @ x / 10
    spec = QuantSpec("int4", granularity=PerGroup(64))
    with pytest.raises(HessianError, match=r"model\.layers\.3\.mlp\.up_proj.*10 calibration "
                                           r"tokens for 256.*Raise GPTQ\.percdamp"):
        gptq_quantize(w, h, spec, percdamp=0.0, where="model.layers.3.mlp.up_proj", tokens=10)
    res = gptq_quantize(w, h, spec, percdamp=0.01, tokens=10)  # damping carries it
    assert res.weight.q.shape == (256, 48)


def test_non_finite_hessian_is_a_clear_error():
    w, h = _layer()
    h[3, 5] = float("nan")
    with pytest.raises(HessianError, match="NaN or Inf"):
        gptq_quantize(w, h, QuantSpec("int4", granularity=PerGroup(64)), where="x")


def test_dead_inputs_are_rounded_to_nearest():
    w, h = _layer()
    h[:, 7] = 0
    h[7, :] = 0
    spec = QuantSpec("int8", granularity=PerChannel(0))
    res = gptq_quantize(w, h, spec)
    assert res.dead_features == 1
    want, _ = reference_gptq(w, h, "int8", True, w.shape[1])
    assert torch.equal(res.weight.q.T.long()[:, 7], want[:, 7])


@pytest.mark.parametrize("act_order", [False, True])
def test_a_shorter_last_group_matches_the_reference(act_order):
    w, h = _layer(k=320)  # groups of 128: 128, 128, 64 (SmolLM2: 576 = 4 x 128 + 64)
    spec = QuantSpec("int4", symmetric=False, granularity=PerGroup(128))
    res = gptq_quantize(w, h, spec, act_order=act_order)
    assert res.weight.scale.shape == (5, 48)  # stored at blocks of gcd(320, 128) = 64
    assert torch.equal(res.weight.scale[0], res.weight.scale[1])
    want, ties = reference_gptq(w, h, "int4", False, 128, act_order=act_order)
    same = (res.weight.q.T.long() == want).all(1)
    assert bool(same[~ties].all())


def test_groups_that_cannot_be_stored_are_a_clear_error():
    w, h = _layer(k=200)
    with pytest.raises(ValueError, match=r"layer x: group size 64 does not divide 200 input "
                                         r"features.*gcd\(200, 64\) = 8"):
        gptq_quantize(w, h, QuantSpec("int4", granularity=PerGroup(64)), where="layer x")
