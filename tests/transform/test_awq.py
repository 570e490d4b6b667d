"""The AWQ pass keeps the float function, never does worse than RTN on its calibration data,
and lowers the weight-only quantized error against the float model."""

from __future__ import annotations

import pytest
import torch

import qpass
from qpass.config import LayerPrecision, PerGroup, QuantSpec
from qpass.quantizable import find_sites
from qpass.transform import awq_search as search
from qpass.transform.awq import AWQ
from qpass.transform.block_output import block_output
from qpass.transform.gptq import GPTQ
from tests.transform.toy_models import tiny_llama

pytest.importorskip("transformers")
KEEP = ("*lm_head", "*embed*")
W3 = QuantSpec("int3", symmetric=False, granularity=PerGroup(32))


def _recipe(*passes, spec=W3) -> qpass.Recipe:
    return qpass.Recipe("w3 test", LayerPrecision(spec), keep_float=KEEP, passes=passes)


@pytest.fixture(scope="module")
def llama():
    model = tiny_llama(outlier=20.0)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 128, (2, 32), generator=g),) for _ in range(4)]
    held = [(torch.randint(0, 128, (2, 32), generator=g),) for _ in range(3)]
    return model, qpass.capture(model, batches[0]), batches, held


def _rel_error(q, model, held):
    with torch.no_grad():
        return sum(((q(*b) - model(*b)).pow(2).sum() / model(*b).pow(2).sum()).item()
                   for b in held)


def test_scaling_keeps_the_float_function_and_never_loses_to_rtn_on_calibration(llama):
    model, gm, batches, held = llama
    prepared = qpass.prepare(gm, _recipe(AWQ(clip=False)), batches[0], calib_data=batches,
                             progress=False)
    groups = prepared.meta["qpass"].reports["passes"]["awq"]["groups"]
    folds = {g["fold"] for g in groups}
    assert "scale_mul" in folds and "linear" in folds  # norms, and v->o / up->down
    scaled = [g for g in groups if g.get("error") is not None]
    assert len(scaled) >= 6
    assert all(g["error"] <= g["error_unscaled"] for g in scaled)
    assert any(g["ratio"] is not None for g in scaled)
    with torch.no_grad():
        for b in held:
            torch.testing.assert_close(prepared(*b), model(*b), rtol=1e-4, atol=1e-4)


def test_awq_and_awq_then_gptq_beat_rtn_against_the_float_model(llama):
    model, gm, batches, held = llama
    e = {name: _rel_error(qpass.quantize(gm, _recipe(*passes), batches, batches[0],
                                         progress=False), model, held)
         for name, passes in {"rtn": (), "awq": (AWQ(),), "awq+gptq": (AWQ(), GPTQ())}.items()}
    assert e["awq"] < 0.9 * e["rtn"], e
    assert e["awq+gptq"] < 0.9 * e["rtn"], e


def test_clip_select_keeps_the_candidate_with_the_least_clipped_error(llama):
    model, gm, batches, held = llama
    prepared = qpass.prepare(gm, _recipe(AWQ(clip_select=3)), batches[0], calib_data=batches,
                             progress=False)
    groups = [g for g in prepared.meta["qpass"].reports["passes"]["awq"]["groups"]
              if "reselect" in g]
    assert len(groups) >= 6
    for g in groups:
        assert len(g["reselect"]) == 3 and g["ratio"] in g["reselect"]
        assert g["reselect"][g["ratio"]] == min(g["reselect"].values())
    q = qpass.convert(prepared)
    assert _rel_error(q, model, held) < 0.9 * _rel_error(
        qpass.quantize(gm, _recipe(), batches, batches[0], progress=False), model, held)


def test_clip_search_lowers_each_groups_output_error():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 96, generator=g)
    w[:, 5] *= 8  # a weight outlier in group 0 that costs the rest of its group resolution
    x = torch.randn(400, 96, generator=g)
    h = x.T @ x
    spec = QuantSpec("int3", symmetric=True, granularity=PerGroup(32))
    ratios = search.clip_ratios(w, spec, h, max_shrink=0.5, steps=20)
    assert ratios.shape == (16, 3, 2) and float(ratios.min()) >= 0.5
    clipped = search.apply_clip(w, spec, ratios)

    def err(wc):
        d = search.fake_quant(wc, spec) - w
        return float(((d @ h) * d).sum())

    assert err(clipped) < err(w)
    assert float(ratios[:, 0].mean()) < 1.0  # the outlier group is clipped


def test_separate_bounds_search_never_loses_and_lowers_the_error():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 64, generator=g)
    w[:, 3] -= 4  # a negative outlier in group 0
    x = torch.randn(300, 64, generator=g)
    h = x.T @ x
    spec = QuantSpec("int3", symmetric=False, granularity=PerGroup(32))

    def errs(ratios):  # [N, G] output error of each (row, group)
        d = search.fake_quant(search.apply_clip(w, spec, ratios), spec) - w
        return torch.stack([((d[:, a:b] @ h[a:b, a:b]) * d[:, a:b]).sum(1)
                            for a, b in ((0, 32), (32, 64))], 1)

    joint = search.clip_ratios(w, spec, h, max_shrink=0.5, steps=20)
    both = search.clip_ratios(w, spec, h, max_shrink=0.5, steps=20, separate=True)
    assert torch.equal(joint[..., 0], joint[..., 1])
    assert bool((errs(both) <= errs(joint)).all())
    assert float(errs(both).sum()) < 0.99 * float(errs(joint).sum())
    assert bool((both[..., 0] != both[..., 1]).any())  # the bounds moved apart
    sym = QuantSpec("int3", symmetric=True, granularity=PerGroup(32))
    assert torch.equal(search.clip_ratios(w, sym, h, 0.5, 20, separate=True),
                       search.clip_ratios(w, sym, h, 0.5, 20))


@pytest.mark.parametrize("bad", [{"grid": 0}, {"clip_grid": 0}, {"max_shrink": 1.0},
                                 {"skip": "x"}])
def test_invalid_config_names_the_field(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=rf"AWQ\.{field}="):
        AWQ(**bad)


def test_recipe_round_trip():
    recipe = _recipe(AWQ(clip=False), GPTQ())
    d = recipe.to_dict()
    assert [p["type"] for p in d["passes"]] == ["awq", "gptq"]
    assert qpass.Recipe.from_dict(d) == recipe


def test_block_output_is_the_next_linear_the_group_feeds(llama):
    _, gm, _, _ = llama
    sites = find_sites(gm)
    by_fqn = {s.fqn: s for s in sites}
    layer = "model.model.layers.0."
    attn = [by_fqn[layer + f"self_attn.{p}_proj"] for p in "qkv"]
    mlp = [by_fqn[layer + f"mlp.{p}_proj"] for p in ("gate", "up")]
    assert block_output(attn, sites) is by_fqn[layer + "self_attn.o_proj"].node
    assert block_output(mlp, sites) is by_fqn[layer + "mlp.down_proj"].node
    for writer in ("self_attn.o_proj", "mlp.down_proj"):  # added into the residual stream
        assert block_output([by_fqn[layer + writer]], sites) is None


def test_scale_error_is_measured_on_the_attention_block_output(llama):
    """The q/k/v group's unscaled error equals Σ ||o_proj(attention(Q(W))) - o_proj(...)||²
    computed in eager PyTorch with round-to-nearest q/k/v weights."""
    model, gm, batches, _ = llama
    prepared = qpass.prepare(gm, _recipe(AWQ(clip=False)), batches[0], calib_data=batches,
                             progress=False)
    group = prepared.meta["qpass"].reports["passes"]["awq"]["groups"][0]
    attn = model.model.model.layers[0].self_attn
    assert group["consumers"][0].endswith("layers.0.self_attn.q_proj")
    assert group["inspected"] is not None
    outs: list[torch.Tensor] = []
    hook = attn.o_proj.register_forward_hook(lambda m, i, o: outs.append(o.detach()))
    try:
        with torch.no_grad():
            ref = [(model(*b), outs.pop())[1] for b in batches]
            saved = [p.weight.detach().clone() for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
            for p in (attn.q_proj, attn.k_proj, attn.v_proj):
                p.weight.copy_(search.fake_quant(p.weight, W3))
            got = [(model(*b), outs.pop())[1] for b in batches]
            for p, w in zip((attn.q_proj, attn.k_proj, attn.v_proj), saved, strict=True):
                p.weight.copy_(w)
    finally:
        hook.remove()
    want = sum(float((g - r).double().pow(2).sum()) for g, r in zip(got, ref, strict=True))
    assert group["error_unscaled"] == pytest.approx(want, rel=1e-4)


def test_awq_result_exports_as_int4_and_onnx_runtime_matches_the_torch_reference(llama,
                                                                                  tmp_path):
    import numpy as np
    import onnx

    from qpass.eval.ort import ort_session

    model, gm, batches, held = llama
    w4 = QuantSpec("int4", symmetric=False, granularity=PerGroup(32))
    q = qpass.quantize(gm, _recipe(AWQ(), spec=w4), batches, batches[0], progress=False)
    path = qpass.export_onnx(q, batches[0], tmp_path / "awq.onnx")
    int4 = [t for t in onnx.load(path).graph.initializer
            if t.data_type == onnx.TensorProto.INT4 and np.prod(t.dims) >= 2048]
    assert len(int4) == 14  # q, k, v, o, gate, up, down of both layers (not zero points)
    session = ort_session(path)  # MatMulNBits in float32, as the reference computes
    for (ids,) in held:
        got = session.run(None, {session.get_inputs()[0].name: ids.numpy()})[0]
        np.testing.assert_allclose(got, q(ids).detach().numpy(), rtol=1e-4, atol=1e-4)
