"""qpass.lower on toy models: the graph it writes, its numbers against the converted and the
float model, its report, and its errors."""

import logging

import pytest
import torch

import qpass
from qpass import ops
from qpass.config import LayerPrecision, PerChannel, PerGroup, PerToken, QuantSpec, Recipe
from qpass.lower import KERNELS, LoweredLinear
from qpass.lower.reference import Int8Reference
from tests.toy_models import Functional, tiny_lm, token_batches

QDQ_OPS = (ops.QUANTIZE, ops.DEQUANTIZE, ops.CHOOSE_QPARAMS_PER_TOKEN)
INT8_W = QuantSpec("int8", granularity=PerChannel(0))
DYN = QuantSpec("int8", granularity=PerToken(), dynamic=True)


def _quantized(recipe, model=None, example=None):
    model = model or tiny_lm()
    example = example if example is not None else token_batches(1)[0]
    batches = [example] if example.dtype.is_floating_point else token_batches(4)
    return model, example, qpass.quantize(model, recipe, batches, (example,), progress=False)


def _lowered(gm):
    return {n: m.kernel_name for n, m in gm.named_modules() if isinstance(m, LoweredLinear)}


def _qdq_nodes(gm):
    return [n for n in gm.graph.nodes if n.target in QDQ_OPS]


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("recipe,kernel", [("w8a16", "weight_only.reference"),
                                           ("w8a8_dynamic", "w8a8_int8.reference"),
                                           ("w8a8_static", "w8a8_int8.reference")])
def test_cpu_lowering_replaces_every_qdq_linear_and_keeps_the_numbers(recipe, kernel):
    model, ids, q = _quantized(recipe)
    low = qpass.lower(q, backend="cpu")
    # graph: one kernel call per site, no Q/DQ op left, converted weights dropped
    assert _lowered(low) == {"qpass_lowered_up": kernel, "qpass_lowered_down": kernel}
    assert _qdq_nodes(low) == [] and _qdq_nodes(q) != []  # the converted model is untouched
    assert not any(name.endswith("weight_q") for name, _ in low.named_buffers()
                   if not name.startswith("qpass_lowered"))
    # numbers: the converted graph's up to float32 rounding, and near the float model
    with torch.no_grad():
        y, y_conv, y_float = low(ids), q(ids), model(ids)
    torch.testing.assert_close(y, y_conv, rtol=1e-5, atol=1e-5)
    assert _rel(y, y_float) < 0.05


def test_lowering_functional_ops_mm_addmm_matmul():
    torch.manual_seed(0)
    model, x = Functional().eval(), torch.randn(6, 8)
    _, _, q = _quantized(Recipe("f", LayerPrecision(weight=INT8_W, activation=DYN),
                                keep_float=()), model, x)
    low = qpass.lower(q, backend="cpu")
    report = low.meta["qpass"].reports["lower"]
    assert report.kernels() == {"w8a8_int8.reference": 4} and _qdq_nodes(low) == []
    with torch.no_grad():
        torch.testing.assert_close(low(x), q(x), rtol=1e-5, atol=1e-5)
        assert _rel(low(x), model(x)) < 0.05


def test_cuda_backend_without_a_gpu_falls_back_to_the_references(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _, ids, q = _quantized("w8a8_dynamic")
    with caplog.at_level(logging.INFO, logger="qpass.lower"):
        low = qpass.lower(q, backend="cuda")
    report = low.meta["qpass"].reports["lower"]
    assert report.backend == "cuda" and report.kernels() == {"w8a8_int8.reference": 2}
    site = report.sites[0]
    assert site.fqn == "up" and (site.in_features, site.out_features) == (32, 64)
    refused = dict(site.refused)
    assert set(refused) == {"w8a8_int8.triton", "w8a8_int8.int_mm"}
    assert "no CUDA device is available" in refused["w8a8_int8.int_mm"]
    assert "no CUDA device is available" in caplog.text
    assert report.to_dict()["sites"][0]["refused"][0] == ["w8a8_int8.triton",
                                                          refused["w8a8_int8.triton"]]
    with torch.no_grad():
        torch.testing.assert_close(low(ids), q(ids), rtol=1e-5, atol=1e-5)


def test_a_site_no_kernel_computes_keeps_its_reference_qdq_ops():
    # int8 weights per group with per-token activations: no W8A8 kernel takes group scales
    weight = QuantSpec("int8", granularity=PerGroup(16))
    model, ids, q = _quantized(Recipe("g", LayerPrecision(weight=weight, activation=DYN)))
    low = qpass.lower(q, backend="cpu")
    report = low.meta["qpass"].reports["lower"]
    assert report.kernels() == {"reference Q/DQ": 2} and _lowered(low) == {}
    reasons = dict(report.sites[0].refused)
    assert "per group of 16" in reasons["w8a8_int8.reference"]
    assert "activations are quantized" in reasons["weight_only.reference"]
    with torch.no_grad():
        assert torch.equal(low(ids), q(ids))


def test_a_registered_kernel_with_higher_priority_wins():
    class Plugin(Int8Reference):
        priority = 50

    KERNELS.add("w8a8_int8.test_plugin", Plugin)
    try:
        _, ids, q = _quantized("w8a8_dynamic")
        low = qpass.lower(q, backend="cpu")
        assert set(_lowered(low).values()) == {"w8a8_int8.test_plugin"}
        assert "kernel=w8a8_int8.test_plugin, in_features=32, out_features=64" in str(low)
    finally:
        KERNELS.unregister("w8a8_int8.test_plugin")


def test_lowered_module_follows_to_dtype_and_keeps_leading_axes():
    _, ids, q = _quantized("w8a16")
    low = qpass.lower(q, backend="cpu")
    x = torch.randn(2, 3, 32, dtype=torch.float64)
    y = low.qpass_lowered_up(x, low.up.bias)
    assert y.shape == (2, 3, 64) and y.dtype == torch.float64


def test_bad_backend_and_unconverted_models_are_clear_errors():
    model, ids, q = _quantized("w8a16")
    with pytest.raises(ValueError, match=r"lower backend='tpu' is not valid; allowed: cuda, cpu"):
        qpass.lower(q, backend="tpu")
    prepared = qpass.prepare(model, "w8a16", (ids,))
    with pytest.raises(ValueError, match="needs a converted model.*call qpass.convert"):
        qpass.lower(prepared, backend="cpu")
    with pytest.raises(ValueError, match="needs a GraphModule returned by qpass.prepare"):
        qpass.lower(torch.fx.symbolic_trace(model), backend="cpu")


def _llm_int8_recipe(mode):
    pytest.importorskip("qpass.convert.outliers", reason="the LLM.int8() convert format")
    cols = (1, 5) if mode == "static" else None
    prec = LayerPrecision(weight=INT8_W, activation=DYN, outlier_threshold=2.0,
                          outlier_mode=mode, outlier_columns=cols)
    return Recipe(f"llm_int8_{mode}", prec)


def test_static_llm_int8_split_lowers_to_one_split_kernel():
    model, ids, q = _quantized(_llm_int8_recipe("static"))
    low = qpass.lower(q, backend="cpu")
    assert set(_lowered(low).values()) == {"llm_int8.reference"} and len(_lowered(low)) == 2
    left = {str(n.target) for n in low.graph.nodes if n.op == "call_function"}
    assert not any(t in left for t in ("aten.index_select.default", "aten.mul.Tensor"))
    assert _qdq_nodes(low) == []
    with torch.no_grad():
        torch.testing.assert_close(low(ids), q(ids), rtol=1e-5, atol=1e-5)
        assert _rel(low(ids), model(ids)) < 0.05


def test_dynamic_llm_int8_lowers_as_an_int8_and_a_weight_only_part():
    model, ids, q = _quantized(_llm_int8_recipe("dynamic"))
    low = qpass.lower(q, backend="cpu")
    assert low.meta["qpass"].reports["lower"].kernels() == {"w8a8_int8.reference": 2,
                                                           "weight_only.reference": 2}
    with torch.no_grad():
        torch.testing.assert_close(low(ids), q(ids), rtol=1e-5, atol=1e-5)
