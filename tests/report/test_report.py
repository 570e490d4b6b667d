import math
import re
import sys

import pytest
import torch

import qpass
from qpass.report import build_report, collect, precision_rows
from qpass.report.tap import run_tap
from tests.toy_models import tiny_lm, token_batches


def _prepared(recipe: str):
    batches = token_batches(4)
    prepared = qpass.prepare(tiny_lm(), recipe, batches[0], calib_data=batches, progress=False)
    if prepared.meta["qpass"].observers:
        qpass.calibrate(prepared, batches, progress=False)
    return prepared


@pytest.mark.parametrize("recipe", ["w8a8_static", "w8a8_dynamic", "w8a16"])
def test_simulated_run_computes_what_the_converted_model_computes(recipe):
    prepared = _prepared(recipe)
    x = token_batches(1, seed=9)[0]
    simulated = run_tap(prepared, (x,), lambda *a: None, simulate=True)
    converted = qpass.convert(prepared)(x)
    float_out = run_tap(prepared, (x,), lambda *a: None)
    assert torch.allclose(simulated, converted, rtol=0, atol=1e-5)
    assert not torch.equal(simulated, float_out)  # the simulation did quantize


def test_local_sqnr_matches_a_float64_reference():
    prepared = _prepared("w8a8_dynamic")
    x = token_batches(1, seed=9)[0]
    report = collect(prepared, (x,))
    up = next(s for s in report.sites if s.fqn == "up")
    emb = prepared.embed.weight.detach()
    h = torch.nn.functional.embedding(x, emb).double().reshape(-1, 32)  # the input of up
    w = prepared.up.weight.detach().double()  # [64, 32]
    amax_w = w.abs().amax(1, keepdim=True)
    w_dq = torch.round(w / (amax_w / 127)).clamp(-128, 127) * (amax_w / 127)
    s = h.abs().amax(1, keepdim=True) / 127  # per token, symmetric
    h_dq = torch.round(h / s).clamp(-128, 127) * s
    ref, test = h @ w.T, h_dq @ w_dq.T
    expected = 10 * math.log10(float(ref.square().sum() / (ref - test).square().sum()))
    assert up.local_sqnr == pytest.approx(expected, abs=0.05)
    lm_head = next(s for s in report.sites if s.fqn == "lm_head")
    assert math.isnan(lm_head.local_sqnr) and math.isfinite(lm_head.accumulated_sqnr)


def test_observers_are_left_as_calibrated():
    prepared = _prepared("w8a8_static")
    obs = prepared.qpass_observer_0.observer
    before = (obs.count, obs.lo.clone(), obs.hi.clone())
    collect(prepared, (token_batches(1, shape=(2, 8), seed=3)[0] * 0 + 49,))
    assert obs.count == before[0] and torch.equal(obs.lo, before[1])


def test_report_page_holds_every_layer_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    prepared = _prepared("w8a8_static")
    path = build_report(prepared, (token_batches(1)[0],), tmp_path / "r.html",
                        accuracy=("perplexity", [("FP32", 10.0), ("w8a8_static", 10.4)]))
    page = path.read_text()
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2 + 3  # accuracy, depth, one per distinct activation
    assert all(len(i) > 1000 for i in images)
    assert len(list((tmp_path / "r_files").glob("*.png"))) == 4
    for fqn in ("up", "down", "lm_head"):
        assert f"<td class=\"l\">{fqn}</td>" in page
    assert "keep_float pattern" in page and "+4.00%" in page


def test_report_degrades_without_the_policies_report(monkeypatch):
    prepared = _prepared("w8a8_static")
    monkeypatch.setitem(sys.modules, "qpass.policies.report", None)  # import raises
    rows = precision_rows(prepared)
    assert rows["linear"]["precision"].startswith("W int8 per_channel")
    assert rows["linear_2"]["precision"] == "float"


def test_local_sqnr_of_a_sink_token_spec_uses_each_sequence_first_token_scale():
    from qpass.config import LayerPrecision, QuantSpec, Recipe
    from qpass.recipes import INT8_WEIGHT

    recipe = Recipe("sink", LayerPrecision(INT8_WEIGHT, QuantSpec("int8", sink_tokens=1)))
    batches = token_batches(4)
    prepared = qpass.prepare(tiny_lm(), recipe, batches[0], calib_data=batches, progress=False)
    qpass.calibrate(prepared, batches, progress=False)
    x = token_batches(1, seed=9)[0]  # [2, 8]: two sequences, two sink tokens
    up = next(s for s in collect(prepared, (x,)).sites if s.fqn == "up")
    observer = next(m.observer for m in prepared.modules() if hasattr(m, "observer")
                    and "up" in m.consumers)
    scale, _ = observer.qparams()
    h = torch.nn.functional.embedding(x, prepared.embed.weight.detach()).double()  # [2, 8, 32]
    s = torch.where(torch.arange(8) < 1, scale[0], scale[1]).double()[None, :, None]
    h_dq = (torch.round(h / s).clamp(-128, 127) * s).reshape(-1, 32)
    w = prepared.up.weight.detach().double()
    amax_w = w.abs().amax(1, keepdim=True)
    w_dq = torch.round(w / (amax_w / 127)).clamp(-128, 127) * (amax_w / 127)
    ref, test = h.reshape(-1, 32) @ w.T, h_dq @ w_dq.T
    expected = 10 * math.log10(float(ref.square().sum() / (ref - test).square().sum()))
    assert up.local_sqnr == pytest.approx(expected, abs=0.05)
