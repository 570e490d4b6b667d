import math

import pytest
import torch

import qpass
from qpass.formats import FORMAT_NAMES, compare_formats, summarize, tensor_formats, to_json
from tests.toy_models import tiny_lm, token_batches


def _sqnr(x: torch.Tensor, xq: torch.Tensor) -> float:
    return 10 * math.log10(float(x.square().sum() / (x - xq).square().sum()))


def test_errors_match_float64_references():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g)
    x[:, 7] *= 40  # an outlier column
    r = tensor_formats(x, "x", "activation")
    xd = x.double()
    s = xd.abs().max() / 127  # int8 minmax, symmetric, per tensor
    assert r.errors["int8 minmax"].sqnr_db == pytest.approx(
        _sqnr(xd, torch.round(xd / s).clamp(-128, 127) * s), abs=1e-3)
    s4 = xd.reshape(64, 2, 128).abs().amax(-1, keepdim=True) / 7  # int4, groups of 128
    q4 = (torch.round(xd.reshape(64, 2, 128) / s4).clamp(-8, 7) * s4).reshape(64, 256)
    assert r.errors["int4 g128"].sqnr_db == pytest.approx(_sqnr(xd, q4), abs=1e-3)
    s8 = x.abs().max() / 448  # fp8 e4m3 per tensor: the RNE cast of torch
    q8 = (x / s8).to(torch.float8_e4m3fn).float() * s8
    assert r.errors["fp8_e4m3"].sqnr_db == pytest.approx(_sqnr(xd, q8.double()), abs=1e-3)
    for e in r.errors.values():
        assert e.rel_mse == pytest.approx(10 ** (-e.sqnr_db / 10))
    assert r.errors["int8 best"].sqnr_db >= r.errors["int8 minmax"].sqnr_db
    assert r.errors["int8 best"].note  # names the observer


def test_weights_use_one_scale_per_output_channel():
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(1))
    w[3] *= 100  # one loud output channel does not hurt the others per channel
    r = tensor_formats(w, "w", "weight")
    wd = w.double()
    s = wd.abs().amax(1, keepdim=True) / 127
    assert r.errors["int8 minmax"].sqnr_db == pytest.approx(
        _sqnr(wd, torch.round(wd / s).clamp(-128, 127) * s), abs=1e-3)


def test_int4_g128_says_why_it_does_not_apply():
    r = tensor_formats(torch.randn(4, 96), "x", "activation")
    assert math.isnan(r.errors["int4 g128"].sqnr_db)
    assert "group size 128 does not divide" in r.errors["int4 g128"].note
    assert r.best() in FORMAT_NAMES


def test_compare_formats_on_a_model_and_a_layer():
    batches = token_batches(2)
    prepared = qpass.prepare(tiny_lm(), "w8a16", batches[0], progress=False)
    results = compare_formats(prepared, (batches[0],))
    assert [r.name for r in results] == ["up.weight", "up input", "down.weight", "down input",
                                        "lm_head.weight", "lm_head input"]
    summary = summarize(results)
    assert {s["format"] for s in summary} <= set(FORMAT_NAMES)
    assert to_json(results)["tensors"][0]["errors"]["int4 g128"]["sqnr_db"] is None  # K=32
    only = compare_formats(prepared, (batches[0],), layer="down")
    assert [r.name for r in only] == ["down.weight", "down input"]
    with pytest.raises(ValueError, match="no quantization site matches the layer glob 'nope'"):
        compare_formats(prepared, (batches[0],), layer="nope")
